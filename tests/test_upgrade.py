"""``spoolatp upgrade``: a format-1 spool (a ``journal`` file per claimed task) becomes format 2.

The format-1 layout is written by hand (renames and ``journal`` files, as format 1 had them), not by
claiming tasks, so these tests do not depend on what the current ``Spool`` writes. Each test states
its claim in its name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spoolatp import Spool
from spoolatp.errors import SpoolError
from spoolatp.format import SPOOL_FORMAT
from spoolatp.upgrade import TMP_NAME, upgrade

TYPE = "Echo"
WORKTREE = Path(__file__).resolve().parent.parent


def line(t: float, s: int | None, m: str, **more: Any) -> bytes:
    return json.dumps({"t": t, "s": s, "m": m, **more}, separators=(",", ":")).encode() + b"\n"


#: a journal of a task that ran once and finished
FINISHED = (
    line(1795982190.216, 2, "scheduled on s1", srv="s1", att=1)
    + line(1795982190.217, 3, "started", srv="s1", att=1)
    + line(1795982190.3, 5, "finished", srv="s1", att=1)
)
RUNNING = line(1795982191.0, 2, "scheduled on s1", srv="s1", att=1) + line(1795982191.1, 3, "started", srv="s1", att=1)
SCHEDULED = line(1795982192.0, 2, "scheduled on s1", srv="s1", att=1)
FAILED = SCHEDULED + line(1795982192.1, 3, "started", srv="s1", att=1) + line(1795982192.2, 6, "boom", srv="s1", att=1)
#: re-enqueued after its consumer died: ENQUEUED again, with a journal
REENQUEUED = RUNNING + line(1795982193.0, 1, "re-enqueued: s1 presumed dead", att=1, restart=1)


def set_format(path: Path, value: Any) -> None:
    """Rewrite spool.json with another ``format``, keeping every other member."""
    settings = json.loads((path / "spool.json").read_text())
    settings["format"] = value
    (path / "spool.json").write_text(json.dumps(settings))


def settings_of(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((path / "spool.json").read_text())
    return result


def key_of(path: Path, task_id: str) -> str:
    return os.readlink(path / "ids" / f"{TYPE}~{task_id}")


def park(path: Path, task_id: str, where: str, journal: bytes | None) -> Path:
    """Move ENQUEUED task ``task_id`` to ``where`` (``{key}`` stands for its key) and give it ``journal``."""
    key = key_of(path, task_id)
    dest = path / where.format(key=key)
    if dest != path / "enqueued" / key:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path / "enqueued" / key, dest)
    if journal is not None:
        (dest / "journal").write_bytes(journal)
    return dest


def sealed_part(task_file: Path) -> bytes:
    data = task_file.read_bytes()
    header, _, rest = data.partition(b"\n")
    return header + b"\n" + rest[: int(header.split(b" ")[2])]


#: what converting the fixture spool reports: one task directory converted in each place
ONE_IN_EACH = {"enqueued": 1, "delayed": 1, "scheduled": 1, "running": 1, "finished": 1, "failed": 1, "tmp": 1}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A spool in format 1 with one task per place a task directory can be, journals written by hand."""
    path = tmp_path / "spool"
    spool = Spool(path)
    spool.register_type(TYPE, "testing.echo")
    spool.configure(max_input_bytes=1 << 20)  # a member that must survive the upgrade
    for task_id in ("fresh", "requeued", "later", "sched", "run", "done", "bad", "reaping"):
        spool.enqueue(TYPE, task_id, {"n": task_id})
    set_format(path, 1)
    park(path, "requeued", "enqueued/{key}", REENQUEUED)
    park(path, "later", "delayed/18ec82526c6e0d00~{key}", REENQUEUED)
    park(path, "sched", "scheduled/s1/{key}", SCHEDULED)
    park(path, "run", "running/s1/{key}", RUNNING)
    park(path, "done", "finished/{key}", FINISHED)
    park(path, "bad", "failed/{key}", FAILED)
    park(path, "reaping", "tmp/reap~1a2b3c4d~{key}", RUNNING)
    return path


def task_dirs(path: Path) -> dict[str, Path]:
    """Every task directory of the fixture, by task id."""
    out = {}
    for task_file in path.glob("**/task"):
        out[task_file.parent.name.rsplit("~", 1)[1]] = task_file.parent
    return out


def snapshot(path: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and symlink (its text) under ``path``, tmp/clock probes left out."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            out[rel] = os.readlink(full) if os.path.islink(full) else Path(full).read_bytes()
    return out


def run_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPOOLATP_SPOOL", "SPOOLATP_DEBUG")}
    env.update(PYTHONPATH=str(WORKTREE), PYTHONWARNINGS="error")
    return subprocess.run(
        [sys.executable, "-m", "spoolatp", "--spool", str(path), "upgrade", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=WORKTREE,
        timeout=60,
    )


# --------------------------------------------------------------------------- conversion


def test_each_journal_ends_up_after_the_sealed_record_of_its_task_file(path: Path) -> None:
    journals = {tid: (d / "journal").read_bytes() for tid, d in task_dirs(path).items() if (d / "journal").exists()}
    sealed = {tid: (d / "task").read_bytes() for tid, d in task_dirs(path).items()}
    before = settings_of(path)

    report = upgrade(Spool(path))

    assert report.converted == ONE_IN_EACH
    assert (report.total, report.unchanged, report.skipped) == (7, 1, [])  # "fresh" was never claimed
    assert (report.before, report.after) == (1, SPOOL_FORMAT)
    dirs = task_dirs(path)
    for tid, directory in dirs.items():
        assert (directory / "task").read_bytes() == sealed[tid] + journals.get(tid, b""), tid
        assert not (directory / "journal").exists(), tid
        assert not (directory / TMP_NAME).exists(), tid
    assert settings_of(path) == {**before, "format": 2}
    assert settings_of(path)["max_input_bytes"] == 1 << 20


def test_a_converted_task_file_keeps_its_mode_and_takes_the_journals_mtime(path: Path) -> None:
    directory = task_dirs(path)["done"]
    os.chmod(directory / "task", 0o640)
    os.utime(directory / "journal", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    upgrade(Spool(path))

    st = os.lstat(directory / "task")
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == 1_700_000_000_000_000_000  # retention is judged by the last journal line's time


def test_a_task_directory_without_journal_is_left_byte_for_byte(path: Path) -> None:
    fresh = task_dirs(path)["fresh"]
    before = (fresh / "task").read_bytes(), os.lstat(fresh / "task").st_ino

    upgrade(Spool(path))

    assert ((fresh / "task").read_bytes(), os.lstat(fresh / "task").st_ino) == before
    assert sorted(os.listdir(fresh)) == ["task"]


def test_a_signed_header_is_cut_at_its_length_too(path: Path) -> None:
    """The sealed part is found from the header's length alone, whatever its checksum field holds."""
    directory = task_dirs(path)["done"]
    payload = b"\x80\x04payload bytes\nwith a newline"
    header = b"SPOOLATP-TASK 2 %d hmac-sha256:0a1b2c3d:%s\n" % (len(payload), b"f" * 64)
    (directory / "task").write_bytes(header + payload)

    upgrade(Spool(path))

    assert (directory / "task").read_bytes() == header + payload + FINISHED


# --------------------------------------------------------------------------- crashes and re-runs


def test_a_rerun_after_a_crash_before_the_rename_discards_the_half_written_file(path: Path) -> None:
    directory = task_dirs(path)["done"]
    expected = (directory / "task").read_bytes() + FINISHED
    (directory / TMP_NAME).write_bytes(b"half of a file from a run that was killed")

    report = upgrade(Spool(path))

    assert report.skipped == []
    assert (directory / "task").read_bytes() == expected
    assert sorted(os.listdir(directory)) == ["task"]


def test_a_rerun_after_a_crash_between_rename_and_unlink_does_not_repeat_the_journal(path: Path) -> None:
    directory = task_dirs(path)["run"]
    expected = (directory / "task").read_bytes() + RUNNING
    (directory / "task").write_bytes(expected)  # renamed into place; the journal was not removed yet

    upgrade(Spool(path))

    assert (directory / "task").read_bytes() == expected
    assert not (directory / "journal").exists()


def test_a_run_killed_after_some_directories_then_run_again_gives_what_one_run_gives(
    path: Path, tmp_path: Path
) -> None:
    twin = tmp_path / "twin"
    subprocess.run(["cp", "-a", str(path), str(twin)], check=True)
    upgrade(Spool(twin))
    # the first run got through two directories (one of them only up to its rename) and died: still format 1
    done, run = task_dirs(path)["done"], task_dirs(path)["run"]
    (done / "task").write_bytes((done / "task").read_bytes() + FINISHED)
    (done / "journal").unlink()
    (run / "task").write_bytes((run / "task").read_bytes() + RUNNING)

    report = upgrade(Spool(path))

    assert report.total == 6  # "done" had nothing left to do
    assert snapshot(path) == snapshot(twin)


def test_a_second_run_finds_nothing_to_do_and_changes_nothing(path: Path) -> None:
    upgrade(Spool(path))
    before = snapshot(path)

    report = upgrade(Spool(path))

    assert (report.before, report.after, report.total, report.skipped) == (2, 2, 0, [])
    assert snapshot(path) == before


def test_an_error_in_one_directory_stops_the_run_before_the_format_changes(path: Path) -> None:
    directory = task_dirs(path)["run"]
    (directory / TMP_NAME).mkdir()  # cannot be unlinked: stands for a file system that refuses a write
    (directory / TMP_NAME / "x").write_bytes(b"")

    with pytest.raises(SpoolError, match=r"stopped at running/s1/.*run `spoolatp upgrade` again"):
        upgrade(Spool(path))

    assert settings_of(path)["format"] == 1
    assert (directory / "journal").read_bytes() == RUNNING
    (directory / TMP_NAME / "x").unlink()
    (directory / TMP_NAME).rmdir()
    report = upgrade(Spool(path))
    assert (report.total, report.unchanged) == (4, 4)  # enqueued, delayed, scheduled: done by the first run


# --------------------------------------------------------------------------- refusals


def test_a_heartbeating_daemon_is_named_and_nothing_is_changed(path: Path) -> None:
    Spool(path).beat("s1", {"host": "h", "state": "running"})
    before = snapshot(path)

    proc = run_cli(path)

    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spoolatp: error: "), proc.stderr
    assert "s1 on h" in lines[0] and "stop them first" in lines[0] and "--force" in lines[0]
    assert "Traceback" not in proc.stderr
    assert snapshot(path) == before


def test_force_upgrades_past_a_fresh_heartbeat_and_says_so(path: Path) -> None:
    Spool(path).beat("s1", {"host": "h", "state": "running"})

    proc = run_cli(path, "--force", "--json")

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["forced_past"] == ["s1 on h"] and doc["format_after"] == 2 and doc["total"] == 7
    assert settings_of(path)["format"] == 2


def test_stopped_and_long_silent_daemons_do_not_block_it(path: Path) -> None:
    spool = Spool(path)
    spool.beat("s1", {"host": "h", "state": "stopped"})
    spool.beat("s2", {"host": "h2", "state": "running"})
    old = spool.clock() - 61
    os.utime(path / "daemons" / "s2.json", (old, old))  # killed a minute ago: its heartbeat went stale

    report = upgrade(Spool(path))

    assert (report.after, report.forced) == (2, [])


def test_a_spool_in_format_2_is_nothing_to_do_even_while_daemons_run(path: Path) -> None:
    set_format(path, 2)
    Spool(path).beat("s1", {"host": "h", "state": "running"})
    before = snapshot(path)

    proc = run_cli(path)

    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert snapshot(path) == before  # the journal files of this (made-up) case are not looked at either


@pytest.mark.parametrize("value", [99, 3, "2", None, 1.5, True, 0])
def test_an_unknown_format_is_refused_with_its_value_and_what_to_install(path: Path, value: Any) -> None:
    set_format(path, value)
    before = snapshot(path)

    with pytest.raises(SpoolError, match="install a newer spoolatp") as caught:
        upgrade(Spool(path))

    assert f"format {value!r}," in str(caught.value)
    assert snapshot(path) == before


def test_the_command_refuses_format_99_with_exit_1(path: Path) -> None:
    set_format(path, 99)

    proc = run_cli(path)

    assert proc.returncode == 1
    assert proc.stderr.startswith("spoolatp: error: ") and "format 99" in proc.stderr and "newer" in proc.stderr


# --------------------------------------------------------------------------- damaged entries


def test_a_task_file_with_a_garbage_header_is_skipped_reported_and_untouched(path: Path) -> None:
    directory = task_dirs(path)["done"]
    (directory / "task").write_bytes(b"not a header at all\x00\x01")
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}

    proc = run_cli(path)

    assert proc.returncode == 0, proc.stderr
    name = f"finished/{directory.name}"
    assert f"skipped {name}: its task file has no SPOOLATP-TASK header line" in proc.stdout
    assert "the daemons quarantine" in proc.stdout
    assert {name: (directory / name).read_bytes() for name in os.listdir(directory)} == before
    assert settings_of(path)["format"] == 2  # flipped all the same: that task is quarantined when met


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        (b"SPOOLATP-TASK 1 many 0123\npayload", "does not parse"),
        (b"SPOOLATP-TASK 1 9999 0123\nshort", "truncated"),
        (b"SPOOLATP-TASK 1 -99 0123\npayload", "not a number of bytes"),
        (b"SPOOLATP-TASK 1 7\npayload", "does not parse"),
    ],
)
def test_a_damaged_header_is_skipped_with_its_reason(path: Path, task: bytes, reason: str) -> None:
    directory = task_dirs(path)["done"]
    (directory / "task").write_bytes(task)

    report = upgrade(Spool(path))

    assert [(p, reason in r) for p, r in report.skipped] == [(f"finished/{directory.name}", True)]
    assert (directory / "task").read_bytes() == task and (directory / "journal").read_bytes() == FINISHED


def test_a_task_directory_without_task_file_is_skipped(path: Path) -> None:
    directory = task_dirs(path)["bad"]
    (directory / "task").unlink()

    report = upgrade(Spool(path))

    assert report.skipped == [
        (f"failed/{directory.name}", "it has no task file; left as it is, the daemons quarantine it")
    ]
    assert (directory / "journal").read_bytes() == FAILED


def test_a_symlink_planted_in_finished_is_not_followed(path: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "task").write_bytes(b"SPOOLATP-TASK 1 3 00\nabc")
    (outside / "journal").write_bytes(FINISHED)
    key = "418ec7f0c3ba9b000~Echo~planted"
    (path / "finished" / key).symlink_to(outside)

    report = upgrade(Spool(path))

    assert (f"finished/{key}", "not a directory") in [(p, r[:15]) for p, r in report.skipped]
    assert (outside / "task").read_bytes() == b"SPOOLATP-TASK 1 3 00\nabc"
    assert (outside / "journal").read_bytes() == FINISHED
    assert os.readlink(path / "finished" / key) == str(outside)


def test_a_symlinked_journal_or_task_file_is_not_read_through(path: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"t":1,"s":null,"m":"not from the spool"}\n')
    done, run = task_dirs(path)["done"], task_dirs(path)["run"]
    (done / "journal").unlink()
    (done / "journal").symlink_to(secret)
    (run / "task").unlink()
    (run / "task").symlink_to(secret)

    report = upgrade(Spool(path))

    reasons = dict(report.skipped)
    assert "not a file" in reasons[f"finished/{done.name}"]
    assert "symbolic link" in reasons[f"running/s1/{run.name}"]
    assert b"not from the spool" not in (done / "task").read_bytes()
    assert os.readlink(run / "task") == str(secret)
    assert secret.read_bytes() == b'{"t":1,"s":null,"m":"not from the spool"}\n'
    assert (run / "journal").read_bytes() == RUNNING


def test_a_fifo_planted_as_a_journal_or_task_file_is_skipped_not_waited_on(path: Path) -> None:
    done, run = task_dirs(path)["done"], task_dirs(path)["run"]
    (done / "journal").unlink()
    os.mkfifo(done / "journal")  # an open to read it would wait for a writer
    (run / "task").unlink()
    os.mkfifo(run / "task")

    proc = run_cli(path, "--json")  # a subprocess with a timeout: one that blocks fails the test

    assert proc.returncode == 0, proc.stderr
    reasons = {s["path"]: s["reason"] for s in json.loads(proc.stdout)["skipped"]}
    assert set(reasons) == {f"finished/{done.name}", f"running/s1/{run.name}"}
    assert all("not a file but a FIFO" in reason for reason in reasons.values()), reasons
    assert settings_of(path)["format"] == SPOOL_FORMAT


# --------------------------------------------------------------------------- output


def test_the_json_document_has_stable_keys_and_counts(path: Path) -> None:
    proc = run_cli(path, "--json")

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(doc) == [
        "converted",
        "forced_past",
        "format_after",
        "format_before",
        "skipped",
        "spool",
        "total",
        "unchanged",
    ]
    assert doc["converted"] == ONE_IN_EACH
    assert (doc["format_before"], doc["format_after"], doc["total"], doc["unchanged"]) == (1, 2, 7, 1)
    assert doc["skipped"] == [] and doc["spool"] == str(path)

    again = json.loads(run_cli(path, "--json").stdout)
    assert sorted(again) == sorted(doc) and again["total"] == 0 and again["format_before"] == 2


def test_the_text_summary_counts_per_state(path: Path) -> None:
    proc = run_cli(path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"upgraded the spool at {path} from format 1 to 2: converted 7 task directories (enqueued 1, delayed 1, "
        "scheduled 1, running 1, finished 1, failed 1, tmp 1); 1 had no journal and needed nothing"
    )


# --------------------------------------------------------------------------- end to end


def test_after_the_upgrade_the_spool_shows_the_same_history_and_attempts(path: Path) -> None:
    old = Spool(path)
    history = [(r.state, r.message) for r in old.log(TYPE, "done")]
    assert len(history) == 4  # the enqueue record and the three journal lines: format 1 read them

    upgrade(old)

    new = Spool(path)
    assert [(r.state, r.message) for r in new.log(TYPE, "done")] == history
    info = new.info(TYPE, "done")
    assert (info.attempts, info.state.name) == (1, "FINISHED")
    requeued = new.info(TYPE, "requeued")
    assert (requeued.attempts, requeued.restarts) == (1, 1)


def test_a_format_1_spool_goes_on_working_with_journal_files_then_upgrades_with_its_history(tmp_path: Path) -> None:
    """Until it is upgraded, a format-1 spool is served as it was: a journal file beside an unchanged task file."""
    spool_path = tmp_path / "old"
    spool = Spool(spool_path)
    spool.register_type("Echo", "testing.echo")
    set_format(spool_path, 1)
    spool = Spool(spool_path)  # a process that opens it now
    assert spool.journal_file == "journal"
    spool.enqueue("Echo", "t1", [1])
    claim, started = spool.claim_and_start("s1")
    assert started is not None and started.input == [1]
    spool.note(claim, "half way", progress=0.5)
    spool.fail(claim, "done")
    task_dir = spool_path / "failed" / claim.key
    assert sorted(os.listdir(task_dir)) == ["journal", "task"]
    assert (task_dir / "task").read_bytes() == sealed_part(task_dir / "task")  # nothing after the record
    before = [(r.state, r.message, r.attempt) for r in spool.log("Echo", "t1")]
    assert [m for _, m, _ in before] == ["enqueued", "scheduled on s1", "started", "half way", "done"]

    upgrade(spool)
    fresh = Spool(spool_path)
    assert fresh.journal_file == "task" and os.listdir(task_dir) == ["task"]
    assert [(r.state, r.message, r.attempt) for r in fresh.log("Echo", "t1")] == before
    assert fresh.info("Echo", "t1").attempts == 1
    fresh.rerun("Echo", "t1", "again")  # and it goes on: a second attempt, recorded in the task file
    (claim2,) = fresh.claim("s1")
    assert claim2.attempt == 2


def test_a_spool_whose_upgrade_was_interrupted_is_refused_until_upgrade_runs_again(path: Path) -> None:
    """The marker is written before any task file changes: no process takes a converted file for a format-1 one."""
    settings = settings_of(path)
    (path / "spool.json").write_text(json.dumps({**settings, "upgrading": SPOOL_FORMAT}))  # as a killed run leaves it
    for use in (lambda s: s.log("Echo", "run"), lambda s: s.claim("s2"), lambda s: s.enqueue("Echo", "new", 1)):
        with pytest.raises(SpoolError, match="being upgraded to format 2, or its upgrade was interrupted"):
            use(Spool(path))
    upgrade(Spool(path))
    assert "upgrading" not in settings_of(path) and settings_of(path)["format"] == SPOOL_FORMAT
    assert Spool(path).journal_file == "task"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_converted_task_file_keeps_its_owner_and_group(path: Path) -> None:
    directory = task_dirs(path)["run"]
    os.chown(directory / "task", 65534, 65534)
    upgrade(Spool(path))
    st = os.lstat(directory / "task")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
