"""Drop-in producers: task documents and hot folders in ``<spool>/drop/``.

The claims under test: every drop-in becomes exactly one task or is rejected
with its reason; dot-files are never read; a full queue defers, never loses;
and a process killed anywhere inside :func:`spoolatp.dropin.ingest` neither
loses a drop-in nor enqueues it twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolatp import dropin
from spoolatp.format import State
from spoolatp.spool import Spool

TYPE = "SequenceSum"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.register_type(TYPE, "sequence_sum", 60, 600, 3)
    dropin.prepare(spool)
    return spool


def drop(spool: Spool, name: str, content: str | bytes) -> Path:
    """Write a drop-in the Maildir way: a dot-name first, then a rename to the final name."""
    base = dropin.drop_dir(spool)
    tmp = base / f".{name}.tmp"
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.rename(tmp, base / name)
    return base / name


def doc(**fields: object) -> str:
    return json.dumps({"type": TYPE, **fields})


def error_of(spool: Spool, name: str) -> str:
    return (dropin.drop_dir(spool) / "rejected" / f"{name}.error").read_text()


def task_ids(spool: Spool) -> list[str]:
    return sorted(t.task_id for t in spool.tasks())


# --------------------------------------------------------------------------- task documents


def test_document_becomes_a_task_named_after_its_file_and_the_file_is_gone(spool: Spool) -> None:
    drop(spool, "Task001.json", doc(input=[1, 2, 3, 4, 5]))
    report = dropin.ingest(spool)
    assert report.enqueued == [(TYPE, "Task001")]
    assert spool.status(TYPE, "Task001") is State.ENQUEUED
    claim = spool.claim("t")[0]
    assert spool.start(claim).input == [1, 2, 3, 4, 5]
    assert dropin.pending(spool) == []


def test_document_id_field_wins_over_the_file_name(spool: Spool) -> None:
    drop(spool, "whatever.json", doc(id="Task042", input=None))
    assert dropin.ingest(spool).enqueued == [(TYPE, "Task042")]
    assert "[drop-in whatever.json sha256:" in spool.log(TYPE, "Task042")[0].message


def test_dot_files_are_never_read(spool: Spool) -> None:
    (dropin.drop_dir(spool) / ".half-written.json").write_text(doc(id="x"))
    assert not dropin.ingest(spool)
    assert task_ids(spool) == []
    assert (dropin.drop_dir(spool) / ".half-written.json").exists()


def test_drop_in_written_by_a_shell_script_is_ingested(spool: Spool) -> None:
    script = """printf '{"type": "SequenceSum", "input": [1, 2]}' > "$1/.Task7" && mv "$1/.Task7" "$1/Task7.json" """
    subprocess.run(["sh", "-c", script, "sh", str(dropin.drop_dir(spool))], check=True)
    assert dropin.ingest(spool).enqueued == [(TYPE, "Task7")]


BAD = [
    ("notjson.json", "{nope", "not valid JSON"),
    ("latin1.json", b'{"type": "\xe9"}', "not UTF-8 text"),
    ("array.json", "[1, 2]", "not a JSON object but an array"),
    ("unknown.json", json.dumps({"type": "NoSuchType"}), "unknown task type 'NoSuchType'"),
    ("badid.json", doc(id="a/b"), "bad task id: task id 'a/b' contains '/'"),
    ("badtype.json", json.dumps({"type": 5}), '"type" must be a string'),
    ("notype.json", json.dumps({"input": 1}), 'no "type"'),
    ("extra.json", doc(inptu=1), "unknown key(s) 'inptu'"),
    ("twice.json", '{"type": "SequenceSum", "type": "Other"}', "key 'type' appears twice"),
    ("nan.json", '{"type": "SequenceSum", "input": NaN}', "NaN is not a JSON number"),
    ("deep.json", '{"type": "SequenceSum", "input": ' + "[" * 40 + "]" * 40 + "}", "nested too deeply"),
    ("big.json", doc(input="x" * dropin.MAX_DOCUMENT_BYTES), "too large"),
    ("noext", '{"type": "SequenceSum"}', "does not end in .json"),
]


@pytest.mark.parametrize(("name", "content", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_drop_in_goes_to_rejected_with_its_reason(spool: Spool, name: str, content: str, reason: str) -> None:
    drop(spool, name, content)
    drop(spool, "good.json", doc(input=[1]))  # ingest goes on with the rest
    report = dropin.ingest(spool)
    assert report.enqueued == [(TYPE, "good")]
    assert [f for f, _ in report.rejected] == [name]
    assert reason in error_of(spool, name).splitlines()[0]
    assert (dropin.drop_dir(spool) / "rejected" / name).exists()
    assert dropin.rejected(spool) == [name]


def test_a_duplicate_id_is_rejected_and_the_first_task_is_untouched(spool: Spool) -> None:
    drop(spool, "Task001.json", doc(input=[1]))
    dropin.ingest(spool)
    drop(spool, "Task001.json", doc(input=[2]))
    report = dropin.ingest(spool)
    assert report.enqueued == []
    assert "duplicate id: task 'SequenceSum'/'Task001' already exists" in error_of(spool, "Task001.json")
    assert spool.start(spool.claim("t")[0]).input == [1]


def test_symlinks_are_rejected_never_followed(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(doc(id="stolen"))
    os.symlink(secret, dropin.drop_dir(spool) / "link.json")
    dropin.ingest(spool)
    assert "symbolic link" in error_of(spool, "link.json")
    assert task_ids(spool) == []


def test_a_second_rejection_of_the_same_name_keeps_the_first(spool: Spool) -> None:
    for _ in range(2):
        drop(spool, "bad.json", "{")
        dropin.ingest(spool)
    rejected = dropin.rejected(spool)
    assert len(rejected) == 2 and "bad.json" in rejected
    for name in rejected:
        assert (dropin.drop_dir(spool) / "rejected" / f"{name}.error").exists()


def test_a_too_long_file_name_is_rejected_with_its_length(spool: Spool) -> None:
    name = "L" * 220 + ".json"
    drop(spool, name, doc(id="x"))
    report = dropin.ingest(spool)
    assert report.rejected and "file name too long: 225 bytes" in report.rejected[0][1]
    assert dropin.pending(spool) == []


def test_full_queue_leaves_drop_ins_in_place_and_a_later_ingest_takes_them(spool: Spool) -> None:
    spool.configure(max_queue=2)
    for i in range(4):
        drop(spool, f"T{i}.json", doc(input=[i]))
    report = dropin.ingest(spool)
    assert len(report.enqueued) == 2 and len(report.deferred) == 2
    assert sorted(dropin.pending(spool)) == sorted(report.deferred)
    spool.claim("t", limit=2)
    assert len(dropin.ingest(spool).enqueued) == 2
    assert task_ids(spool) == ["T0", "T1", "T2", "T3"]
    assert dropin.rejected(spool) == []


# --------------------------------------------------------------------------- hot folders


@pytest.fixture
def hot(spool: Spool) -> Path:
    spool.register_type("Thumb", "testing.marker", options={"hot_folder": True})
    dropin.prepare(spool)
    return dropin.hot_folder(spool, "Thumb")


def test_hot_folder_file_becomes_a_task_whose_input_is_its_new_path(spool: Spool, hot: Path) -> None:
    (hot / ".photo.jpg").write_bytes(b"JPEG")
    os.rename(hot / ".photo.jpg", hot / "photo.jpg")
    assert dropin.ingest(spool).enqueued == [("Thumb", "photo.jpg")]
    path = Path(spool.start(spool.claim("t")[0]).input)
    assert path == (spool.files_dir("Thumb", "photo.jpg") / "photo.jpg").absolute()
    assert path.read_bytes() == b"JPEG"
    assert os.stat(path).st_nlink == 1  # the producer's name is gone: it cannot change the file
    assert os.listdir(hot) == [".ingest"]


def test_hot_folder_file_is_removed_with_its_task(spool: Spool, hot: Path) -> None:
    (hot / "a.tif").write_bytes(b"x")
    dropin.ingest(spool)
    stored = spool.files_dir("Thumb", "a.tif")
    assert stored.is_dir()
    spool.delete("Thumb", "a.tif")
    assert not stored.exists()


def test_hot_folder_of_a_type_without_the_option_is_not_ingested(spool: Spool) -> None:
    folder = dropin.drop_dir(spool) / TYPE
    folder.mkdir()
    (folder / "x").write_text("1")
    assert not dropin.ingest(spool)
    assert (folder / "x").exists()


def test_hot_folder_rejects_hard_links_directories_and_bad_ids(spool: Spool, hot: Path, tmp_path: Path) -> None:
    outside = tmp_path / "kept.bin"
    outside.write_bytes(b"producer keeps a name")
    os.link(outside, hot / "linked.bin")
    (hot / "dir").mkdir()
    (hot / " spaced").write_bytes(b"x")
    report = dropin.ingest(spool)
    reasons = dict(report.rejected)
    assert "2 hard links" in reasons["Thumb/linked.bin"]
    assert "a directory, not a regular file" in reasons["Thumb/dir"]
    assert "white space" in reasons["Thumb/ spaced"]
    assert task_ids(spool) == []
    assert error_of(spool, "Thumb~linked.bin").startswith("the file has 2 hard links")


def test_hot_folder_duplicate_keeps_the_first_tasks_file(spool: Spool, hot: Path) -> None:
    (hot / "same.bin").write_bytes(b"first")
    dropin.ingest(spool)
    (hot / "same.bin").write_bytes(b"second")
    report = dropin.ingest(spool)
    assert "duplicate id" in report.rejected[0][1]
    assert (spool.files_dir("Thumb", "same.bin") / "same.bin").read_bytes() == b"first"


def test_hot_folder_name_must_not_hide_or_clash(spool: Spool) -> None:
    for name in (".hidden", "rejected"):
        with pytest.raises(ValueError, match="cannot have a hot folder"):
            dropin.hot_folder(spool, name)


# --------------------------------------------------------------------------- crash safety

INJECT = """
import os, signal, sys
from spoolatp import dropin
from spoolatp.spool import Spool

point = sys.argv[2]
real_rename, real_unlink, real_link, real_open = os.rename, os.unlink, os.link, os.open
real_enqueue = Spool.enqueue

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def rename(src, dst, *a, **k):
    real_rename(src, dst, *a, **k)
    if point == "after-claim" and "/.ingest/" in str(dst):
        die()

def unlink(path, *a, **k):
    if point == "before-forget" and "/.ingest/" in str(path):
        die()
    real_unlink(path, *a, **k)

def link(src, dst, *a, **k):
    real_link(src, dst, *a, **k)
    if point == "after-store" and "/files/" in str(dst):
        die()
    if point == "after-put-back" and "/drop/" in str(dst):
        die()

def open_(path, *a, **k):
    fd = real_open(path, *a, **k)
    if point == "after-error-reserved" and str(path).endswith(".error"):
        die()
    return fd

def enqueue(self, *a, **k):
    key = real_enqueue(self, *a, **k)
    if point == "after-enqueue":
        die()
    return key

os.rename, os.unlink, os.link, os.open = rename, unlink, link, open_
Spool.enqueue = enqueue
dropin.ingest(Spool(sys.argv[1]))
sys.exit(0)
"""


def ingest_and_die(spool: Spool, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", INJECT, str(spool.path), point], timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the fault at {point} was never reached"


DOC_POINTS = ["after-claim", "after-enqueue", "before-forget"]


@pytest.mark.parametrize("point", DOC_POINTS)
def test_document_ingest_killed_at_any_point_enqueues_exactly_once(spool: Spool, point: str) -> None:
    drop(spool, "Task001.json", doc(input=[1, 2]))
    ingest_and_die(spool, point)
    report = dropin.ingest(spool)  # the killed claimer's pid is gone: recovered at once
    assert task_ids(spool) == ["Task001"]
    assert len(report.enqueued) + len(report.recovered) == 1
    assert (report.recovered != []) == (point != "after-claim")
    assert dropin.pending(spool) == [] and dropin.rejected(spool) == []


HOT_POINTS = ["after-claim", "after-store", "after-enqueue", "before-forget"]


@pytest.mark.parametrize("point", HOT_POINTS)
def test_hot_folder_ingest_killed_at_any_point_enqueues_exactly_once(spool: Spool, hot: Path, point: str) -> None:
    (hot / "img.png").write_bytes(b"PNG")
    ingest_and_die(spool, point)
    dropin.ingest(spool)
    assert task_ids(spool) == ["img.png"]
    stored = spool.files_dir("Thumb", "img.png") / "img.png"
    assert stored.read_bytes() == b"PNG" and os.stat(stored).st_nlink == 1
    assert dropin.pending(spool) == [] and dropin.rejected(spool) == []


def test_put_back_killed_halfway_loses_nothing_and_duplicates_nothing(spool: Spool) -> None:
    spool.configure(max_queue=1)
    drop(spool, "T1.json", doc(input=[1]))
    drop(spool, "T2.json", doc(input=[2]))  # meets the queue full that T1 just filled: goes back
    ingest_and_die(spool, "after-put-back")
    assert dropin.ingest(spool).deferred == ["T2.json"]
    spool.claim("t")
    assert dropin.ingest(spool).enqueued == [(TYPE, "T2")]
    assert task_ids(spool) == ["T1", "T2"]
    assert dropin.pending(spool) == [] and dropin.rejected(spool) == []


def test_rejection_killed_halfway_still_rejects_the_drop_in_once(spool: Spool) -> None:
    drop(spool, "bad.json", "{")
    ingest_and_die(spool, "after-error-reserved")
    dropin.ingest(spool)
    [name] = dropin.rejected(spool)
    assert error_of(spool, name).startswith("not valid JSON")
    assert dropin.pending(spool) == []


def test_a_claim_of_a_live_process_is_left_alone_until_stale(spool: Spool) -> None:
    drop(spool, "Task9.json", doc())
    inbox = dropin.drop_dir(spool) / ".ingest"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            stamp = f"{int(spool.clock() * 1e9):016x}~{dropin._HOST}~{other.pid}~{'ab' * 8}"
            os.rename(dropin.drop_dir(spool) / "Task9.json", inbox / f"{stamp}~Task9.json")
            assert not dropin.ingest(spool)  # its claimer may still be at work
            assert dropin.ingest(spool, stale_after=0).enqueued == [(TYPE, "Task9")]
        finally:
            other.kill()


LOOP = """
import sys
from spoolatp import dropin
from spoolatp.spool import Spool
spool = Spool(sys.argv[1])
while True:
    dropin.ingest(spool)
"""


def test_kill_9_while_ingesting_1000_drop_ins_loses_and_duplicates_nothing(spool: Spool) -> None:
    names = [f"T{i:04d}" for i in range(1000)]
    for name in names:
        drop(spool, f"{name}.json", doc(input=[1, 2]))
    enqueued = spool.path / "enqueued"
    for threshold in (200, 500, 800):
        proc = subprocess.Popen([sys.executable, "-c", LOOP, str(spool.path)])
        try:
            deadline = time.monotonic() + 30
            while len(os.listdir(enqueued)) < threshold and time.monotonic() < deadline:
                time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    spool.sweep_tmp(grace=0)  # what a sweep does 5 min later: undo enqueues the kills cut short
    report = dropin.ingest(spool)
    tasks = [t.task_id for t in spool.tasks()]
    assert len(tasks) == len(set(tasks)), "a drop-in was enqueued twice"
    assert report.rejected == [] and dropin.rejected(spool) == []
    stuck = sorted(p.rpartition("~")[2][: -len(".json")] for p in dropin.pending(spool))
    assert sorted(tasks + stuck) == names, "a drop-in was lost"
    assert stuck == []  # an enqueue cut short frees its id in the sweep, so the retry goes through


def _exists(spool: Spool, task_id: str) -> bool:
    try:
        spool.status(TYPE, task_id)
    except LookupError:
        return False
    return True


PARALLEL = """
import sys
from spoolatp import dropin
from spoolatp.spool import Spool
spool = Spool(sys.argv[1])
for _ in range(3):
    dropin.ingest(spool)
"""


def test_concurrent_ingesters_enqueue_each_drop_in_once(spool: Spool) -> None:
    names = [f"P{i:03d}" for i in range(400)]
    for name in names:
        drop(spool, f"{name}.json", doc())
    procs = [subprocess.Popen([sys.executable, "-c", PARALLEL, str(spool.path)]) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert task_ids(spool) == names
    assert dropin.rejected(spool) == [] and dropin.pending(spool) == []


# --------------------------------------------------------------------------- with a daemon


def _daemon_available() -> bool:
    try:
        import spoolatp.daemon  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def daemon(spool: Spool) -> Iterator[subprocess.Popen[bytes]]:
    if not _daemon_available():
        pytest.skip("spoolatp.daemon is not there yet")
    env = {k: v for k, v in os.environ.items() if k != "SPOOLATP_SPOOL"}
    args = [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "daemon", "--workers", "1"]
    proc = subprocess.Popen([*args, "--grace", "2", "--log-level", "WARNING"], env=env)
    try:
        deadline = time.monotonic() + 15
        while not spool.daemons() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool.daemons(), "the daemon wrote no heartbeat"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_running_daemon_ingests_a_shell_script_drop_in_within_seconds(
    spool: Spool, daemon: subprocess.Popen[bytes]
) -> None:
    script = """printf '{"type": "SequenceSum", "input": [1, 2, 3, 4, 5]}' > "$1/.d" && mv "$1/.d" "$1/Task001.json" """
    subprocess.run(["sh", "-c", script, "sh", str(dropin.drop_dir(spool))], check=True)
    deadline = time.monotonic() + 5
    while not task_ids(spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task_ids(spool) == ["Task001"], "the daemon did not ingest the drop-in within 5 s"
    while dropin.pending(spool) and time.monotonic() < deadline + 5:  # the ingester forgets its claim right after
        time.sleep(0.05)
    assert dropin.pending(spool) == []
