"""The ``spoolatp`` command, run as a real subprocess (``python -m spoolatp``).

Each test states a claim about a subcommand's output (text or ``--json``),
its exit code, or its one-line error on stderr.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolatp import dropin
from spoolatp.format import State
from spoolatp.spool import Spool

TYPE = "SequenceSum"
COMMANDS = [
    "init",
    "register",
    "types",
    "enqueue",
    "status",
    "log",
    "result",
    "delete",
    "list",
    "wait",
    "stats",
    "sweep",
    "handlers",
    "daemon",
    "demo",
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPOOLATP_SPOOL", "SPOOLATP_DEBUG")}
    return {**env, "PYTHONWARNINGS": "error", **extra}


def run(
    spool: Spool | Path | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    where = ["--spool", str(spool.path if isinstance(spool, Spool) else spool)] if spool is not None else []
    return subprocess.run(
        [sys.executable, "-m", "spoolatp", *where, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
    )


def ok(spool: Spool | Path | None, *args: str, stdin: str | None = None) -> Any:
    """Run a ``--json`` command that must succeed; return its document."""
    proc = run(spool, *args, "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fails(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command failed with ``code`` and said so in one line on stderr, with no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spoolatp: error: "), proc.stderr
    assert text in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.register_type(TYPE, "sequence_sum", 60, 600, 3)
    return spool


def end(spool: Spool, task_id: str, state: State, response: str | bytes | None = None, message: str = "") -> None:
    """Enqueue a task and run it through a consumer in this process, ending it in ``state``.

    Claims take the oldest task first, so this is called while no other task waits.
    """
    spool.enqueue(TYPE, task_id, None, message="enqueued by the test")
    claim = spool.claim("atpd-test")[0]
    assert claim.task_id == task_id
    spool.start(claim)
    if response is not None:
        spool.store_response(claim, response, "text/plain" if isinstance(response, str) else "image/png")
    (spool.finish if state is State.FINISHED else spool.fail)(claim, message)


def _loads(name: str) -> bool:
    try:
        from spoolatp import plugins

        plugins.load_handler(name)
    except Exception:
        return False
    return True


needs_sequence_sum = pytest.mark.skipif(
    not _loads("sequence_sum"),
    reason="spoolatp.plugins cannot load handler 'sequence_sum': pip install ./handlers/sequence-sum",
)
needs_testing = pytest.mark.skipif(
    not _loads("testing.raise"), reason="spoolatp.plugins cannot load 'testing.raise': pip install ./handlers/testing"
)


# --------------------------------------------------------------------------- the command itself


def test_every_subcommand_has_help_with_an_example() -> None:
    procs = {
        c: subprocess.Popen(
            [sys.executable, "-m", "spoolatp", c, "--help"], stdout=subprocess.PIPE, text=True, env=_env()
        )
        for c in COMMANDS
    }
    for command, proc in procs.items():
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, command
        assert "Example" in out and f"spoolatp {command}" in out.replace("--spool /srv/spool ", ""), command


def test_console_script_and_python_m_are_the_same_command() -> None:
    script = shutil.which("spoolatp")
    if script is None:
        pytest.skip("the console script is not on PATH (package not installed with its scripts)")
    a = subprocess.run([script, "--version"], capture_output=True, text=True, env=_env())
    b = run(None, "--version")
    assert a.returncode == b.returncode == 0 and a.stdout.split()[-1] == b.stdout.split()[-1]


def test_unknown_option_is_a_usage_error_with_exit_code_2(spool: Spool) -> None:
    proc = run(spool, "list", "--frobnicate")
    assert proc.returncode == 2 and "No such option" in proc.stderr


def test_commands_on_a_missing_spool_fail_in_one_line_and_create_nothing(tmp_path: Path) -> None:
    fails(run(tmp_path / "typo", "status", TYPE, "x"), 1, "no spool at")
    assert not (tmp_path / "typo").exists()


def test_the_spool_defaults_to_SPOOLATP_SPOOL(spool: Spool) -> None:
    proc = run(None, "types", "--json", env=_env(SPOOLATP_SPOOL=str(spool.path)))
    assert [t["name"] for t in json.loads(proc.stdout)["types"]] == [TYPE]


def test_debug_adds_the_traceback_and_keeps_the_exit_code(spool: Spool) -> None:
    proc = run(spool, "--debug", "status", TYPE, "nope")
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("spoolatp: error: task")


def test_a_broken_pipe_ends_quietly_with_exit_code_1(spool: Spool) -> None:
    for i in range(1500):
        spool.enqueue(TYPE, f"T{i:05d}", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.stderr.read() == b""  # no traceback, no "Exception ignored" from the final flush
    assert proc.wait(timeout=30) == 1  # click's code for a broken pipe: an I/O error
    proc.stderr.close()


# --------------------------------------------------------------------------- spool and types


def test_init_creates_a_spool_and_then_changes_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "new"
    first = ok(path, "init")
    assert first == {"spool": str(path), "created": True, "settings": {"durable": False, "format": 2, "max_queue": 0}}
    assert (path / "drop" / "rejected").is_dir()
    second = ok(path, "init", "--max-queue", "5", "--durable")
    assert second["created"] is False and second["settings"]["max_queue"] == 5 and second["settings"]["durable"]
    assert Spool(path).settings()["max_queue"] == 5


def test_register_stores_timeouts_and_options_and_types_lists_them(spool: Spool) -> None:
    doc = ok(
        spool,
        "register",
        "Sum2",
        "sequence_sum",
        "--timeout",
        "60",
        "--retention",
        "600",
        "--max-restarts",
        "3",
        "--option",
        "level=3",
        "--option",
        "name=abc",
    )
    assert doc == {
        "name": "Sum2",
        "handler": "sequence_sum",
        "timeout": 60.0,
        "timeret": 600.0,
        "maxrestart": 3,
        "options": {"level": 3, "name": "abc"},
        "hot_folder": None,
        "priority": 5,
        "retries": 0,
        "backoff": 1.0,
        "backoff_max": 300.0,
    }
    assert spool.get_type("Sum2").options == {"level": 3, "name": "abc"}
    assert [t["name"] for t in ok(spool, "types")["types"]] == [TYPE, "Sum2"]
    assert "Sum2" in run(spool, "types").stdout


def test_register_hot_folder_creates_the_folder(spool: Spool) -> None:
    doc = ok(spool, "register", "Thumb", "testing.marker", "--hot-folder")
    assert doc["options"] == {"hot_folder": True}
    assert Path(doc["hot_folder"]) == dropin.hot_folder(spool, "Thumb") and Path(doc["hot_folder"]).is_dir()
    fails(run(spool, "register", "rejected", "x", "--hot-folder"), 1, "cannot have a hot folder")


def test_register_warns_about_a_handler_not_installed_here(spool: Spool) -> None:
    proc = run(spool, "register", "Ghost", "no.such.handler")
    assert proc.returncode == 0 and "warning: no installed plugin offers handler 'no.such.handler'" in proc.stderr


def test_register_refuses_an_option_without_a_value(spool: Spool) -> None:
    assert run(spool, "register", "X", "h", "--option", "novalue").returncode == 2


# --------------------------------------------------------------------------- producing and reading tasks


def test_enqueue_takes_input_from_the_argument_a_file_or_stdin(spool: Spool, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"from": "file"}')
    assert ok(spool, "enqueue", TYPE, "a", "[1, 2]")["state"] == "ENQUEUED"
    ok(spool, "enqueue", TYPE, "b", "--input-file", str(tmp_path / "in.json"))
    ok(spool, "enqueue", TYPE, "c", "-", stdin='"from stdin"')
    assert run(spool, "enqueue", TYPE, "d").stdout == f"{TYPE}/d ENQUEUED\n"
    inputs = {c.task_id: spool.start(c).input for c in spool.claim("t", limit=10)}
    assert inputs == {"a": [1, 2], "b": {"from": "file"}, "c": "from stdin", "d": None}


def test_enqueue_refuses_bad_json_and_two_inputs_as_usage_errors(spool: Spool, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text("[]")
    assert run(spool, "enqueue", TYPE, "e", "[1").returncode == 2
    assert run(spool, "enqueue", TYPE, "e", "1", "--input-file", str(tmp_path / "in.json")).returncode == 2
    assert list(spool.tasks()) == []


def test_enqueue_errors_have_their_exit_codes(spool: Spool) -> None:
    fails(run(spool, "enqueue", "NoType", "x"), 1, "task type 'NoType' is not registered")
    fails(run(spool, "enqueue", TYPE, "a/b"), 1, "contains '/'")
    spool.configure(max_queue=1)
    run(spool, "enqueue", TYPE, "x")
    fails(run(spool, "enqueue", TYPE, "x"), 1, "already exists")
    fails(run(spool, "enqueue", TYPE, "y"), 4, "is full")


def test_status_and_log_describe_the_task(spool: Spool) -> None:
    spool.enqueue(TYPE, "T0", [1], message="made by a test")
    status = ok(spool, "status", TYPE, "T0")
    assert {k: status[k] for k in ("type", "id", "state", "code", "attempts", "server")} == {
        "type": TYPE,
        "id": "T0",
        "state": "ENQUEUED",
        "code": 1,
        "attempts": 0,
        "server": None,
    }
    assert set(status) == {
        "type",
        "id",
        "key",
        "state",
        "code",
        "server",
        "attempts",
        "restarts",
        "enqueued",
        "updated",
        "age",
        "progress",
        "progress_message",
        "priority",
        "not_before",
        "cancel_requested",
    }
    assert re.fullmatch(r"- \S+ Status: ENQUEUED \tmade by a test\n", run(spool, "log", TYPE, "T0").stdout)
    spool.delete(TYPE, "T0")
    end(spool, "T1", State.FINISHED, "1.0")
    records = ok(spool, "log", TYPE, "T1")["log"]
    assert [r["state"] for r in records] == ["ENQUEUED", "SCHEDULED", "RUNNING", "FINISHED"]
    assert records[0]["message"] == "enqueued by the test" and records[1]["server"] == "atpd-test"
    assert set(records[0]) == {"time", "when", "state", "code", "change", "message", "server", "attempt", "progress"}
    assert run(spool, "status", TYPE, "T1").stdout.splitlines()[1] == "state     FINISHED (5)"


def test_a_missing_task_is_exit_code_3_for_every_command(spool: Spool) -> None:
    for command in ("status", "log", "result", "delete", "wait"):
        fails(run(spool, command, TYPE, "nope"), 3, "task 'SequenceSum'/'nope' not found")


def test_delete_removes_the_task(spool: Spool) -> None:
    spool.enqueue(TYPE, "T1", None)
    assert ok(spool, "delete", TYPE, "T1") == {"type": TYPE, "id": "T1", "deleted": True}
    assert list(spool.tasks()) == []


def test_result_prints_text_and_writes_bytes_raw(spool: Spool, tmp_path: Path) -> None:
    end(spool, "text", State.FINISHED, "15.0")
    raw = bytes(range(256)) * 3
    end(spool, "bytes", State.FINISHED, raw)
    end(spool, "none", State.FINISHED)
    assert run(spool, "result", TYPE, "text").stdout == "15.0\n"
    binary = subprocess.run(
        [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "result", TYPE, "bytes"],
        capture_output=True,
        env=_env(),
    )
    assert binary.returncode == 0 and binary.stdout == raw
    assert run(spool, "result", TYPE, "bytes", "--output", str(tmp_path / "out.png")).returncode == 0
    assert (tmp_path / "out.png").read_bytes() == raw
    doc = ok(spool, "result", TYPE, "bytes")
    assert doc["kind"] == "bytes" and doc["mime_type"] == "image/png" and doc["encoding"] == "base64"
    assert base64.b64decode(doc["response"]) == raw
    assert ok(spool, "result", TYPE, "text")["response"] == "15.0"
    fails(run(spool, "result", TYPE, "none"), 1, "has stored no response")


def test_list_shows_state_attempts_age_and_server_and_filters(spool: Spool) -> None:
    for i in range(3):
        spool.enqueue(TYPE, f"T{i}", None)
    spool.claim("srv1")
    listed = ok(spool, "list")
    assert listed["count"] == 3 and listed["truncated"] is False
    held = [t for t in listed["tasks"] if t["state"] == "SCHEDULED"]
    assert [(t["id"], t["server"], t["attempts"]) for t in held] == [("T0", "srv1", 1)]
    assert [t["id"] for t in ok(spool, "list", "--state", "SCHEDULED")["tasks"]] == ["T0"]
    assert [t["id"] for t in ok(spool, "list", "--state", "1")["tasks"]] == ["T1", "T2"]
    assert ok(spool, "list", "--type", "Other")["count"] == 0
    limited = ok(spool, "list", "--limit", "2")
    assert limited["count"] == 2 and limited["truncated"] is True
    assert run(spool, "list", "--state", "BOGUS").returncode == 2
    text = run(spool, "list").stdout
    assert text.splitlines()[0].split() == ["STATE", "TYPE", "ID", "ATTEMPTS", "AGE", "SERVER"] and "srv1" in text


# --------------------------------------------------------------------------- waiting


def test_wait_exit_codes_follow_the_tasks_end(spool: Spool) -> None:
    end(spool, "good", State.FINISHED)
    end(spool, "bad", State.FAILED, message="Input must be a sequence of numbers!\nmore detail")
    spool.enqueue(TYPE, "slow", None)
    good = run(spool, "wait", TYPE, "good")
    assert good.returncode == 0 and good.stdout == "FINISHED\n"
    fails(run(spool, "wait", TYPE, "bad"), 5, "FAILED: Input must be a sequence of numbers! (see")
    fails(run(spool, "wait", TYPE, "slow", "--timeout", "0.3"), 6, "still ENQUEUED after 0.3 s")
    doc = json.loads(run(spool, "wait", TYPE, "bad", "--json").stdout)
    assert doc["state"] == "FAILED" and doc["message"].startswith("Input must be")


def test_wait_returns_when_another_process_ends_the_task(spool: Spool) -> None:
    spool.enqueue(TYPE, "T1", None)
    cmd = [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "wait", TYPE, "T1", "--json"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env()) as waiter:
        time.sleep(0.5)
        assert waiter.poll() is None
        claim = spool.claim("atpd-test")[0]
        spool.start(claim)
        spool.finish(claim)
        out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and json.loads(out)["state"] == "FINISHED"


def _read_until(fd: int, wanted: bytes | None, timeout: float) -> bytes:
    """Read a pseudo-terminal until ``wanted`` shows (or, for None, until its other side closes)."""
    screen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (wanted is None or wanted not in screen):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        screen += chunk
    return screen


def test_wait_draws_the_handlers_progress_on_a_terminal(spool: Spool) -> None:
    spool.enqueue(TYPE, "T1", None)
    claim = spool.claim("atpd-test")[0]
    spool.start(claim)
    spool.note(claim, "half way", progress=0.5)
    primary, secondary = os.openpty()
    cmd = [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "wait", TYPE, "T1"]
    try:
        with subprocess.Popen(cmd, stdout=secondary, stderr=secondary, env=_env()) as waiter:
            os.close(secondary)
            before = _read_until(primary, b"half way", 30)
            spool.finish(claim)
            after = _read_until(primary, None, 30)
            waiter.wait(timeout=30)
    finally:
        os.close(primary)
    assert waiter.returncode == 0
    assert b"50%" in before and b"RUNNING half way" in before
    assert b"100%" in after and b"FINISHED" in after


# --------------------------------------------------------------------------- observing and maintaining


PROMETHEUS_LINE = re.compile(r'[a-z_]+(\{([a-z]+="[^"]*",?)+\})? [0-9.e+-]+')


def test_stats_counts_states_types_throughput_daemons_and_quarantine(spool: Spool) -> None:
    end(spool, "done", State.FINISHED)
    end(spool, "broken", State.FAILED)
    spool.enqueue(TYPE, "waiting", None)
    spool.beat("atpd-1", {"host": "h1", "pid": 1, "workers": 2, "running": [], "state": "running"})
    (spool.path / "quarantine" / "junk").write_text("x")
    (spool.path / "quarantine" / "junk.reason").write_text("bad")
    dropin.prepare(spool)
    (dropin.drop_dir(spool) / "bad.json").write_text("{")
    dropin.ingest(spool)
    data = ok(spool, "stats")
    assert data["counts"] == {"ENQUEUED": 1, "SCHEDULED": 0, "RUNNING": 0, "FINISHED": 1, "FAILED": 1}
    assert data["types"][TYPE]["FAILED"] == 1
    assert data["oldest_enqueued_age"] >= 0
    assert data["ended"]["1m"] == {"FINISHED": 1, "FAILED": 1} and set(data["ended"]) == {"1m", "5m", "15m"}
    assert [d["server"] for d in data["daemons"]] == ["atpd-1"] and data["daemons"][0]["age"] < 60
    assert data["quarantine"] == 1 and data["drop"] == {"pending": 0, "rejected": 1}
    prom = run(spool, "stats", "--prometheus").stdout.splitlines()
    assert "# TYPE spoolatp_tasks gauge" in prom
    assert f'spoolatp_tasks{{state="FINISHED",type="{TYPE}"}} 1' in prom
    assert 'spoolatp_tasks_ended{state="FAILED",window="5m"} 1' in prom
    assert "spoolatp_quarantined_files 1" in prom
    assert any(line.startswith('spoolatp_daemon_heartbeat_age_seconds{server="atpd-1"}') for line in prom)
    for line in prom:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or PROMETHEUS_LINE.fullmatch(line), line
    assert "atpd-1" in run(spool, "stats").stdout
    assert run(spool, "stats", "--json", "--prometheus").returncode == 2


def test_sweep_reenqueues_zombies_retires_tasks_and_ingests_drop_ins(spool: Spool) -> None:
    run(spool, "register", "Z", "sequence_sum", "--timeout", "0.05")
    run(spool, "register", "R", "sequence_sum", "--retention", "0.05")
    spool.enqueue("Z", "z1", None)
    spool.claim("atpd-gone")
    spool.enqueue("R", "r1", None)
    retired = spool.claim("atpd-test")[0]
    spool.start(retired)
    spool.finish(retired)
    dropin.prepare(spool)
    script = (
        """printf '{"type": "SequenceSum"}' > "$1/.x" && mv "$1/.x" "$1/Task001.json" && echo nope > "$1/bad.json" """
    )
    subprocess.run(["sh", "-c", script, "sh", str(dropin.drop_dir(spool))], check=True)
    time.sleep(0.2)
    doc = ok(spool, "sweep")
    assert doc["reenqueued"] == [{"type": "Z", "id": "z1", "state": "ENQUEUED"}]
    assert doc["retired"] == [{"type": "R", "id": "r1"}]
    assert doc["dropin"]["enqueued"] == [{"type": TYPE, "id": "Task001"}]
    assert [r["file"] for r in doc["dropin"]["rejected"]] == ["bad.json"]
    assert set(doc) == {"reenqueued", "retired", "tmp_cleaned", "dropin"}
    assert run(spool, "sweep").stdout == "nothing to do\n"


def test_a_file_moved_into_a_hot_folder_becomes_a_task_at_the_next_sweep(spool: Spool, tmp_path: Path) -> None:
    folder = Path(ok(spool, "register", "Thumb", "testing.marker", "--hot-folder")["hot_folder"])
    (tmp_path / "photo.jpg").write_bytes(b"JPEG")
    subprocess.run(
        [
            "sh",
            "-c",
            'cp "$1" "$2/.photo.jpg" && mv "$2/.photo.jpg" "$2/photo.jpg"',
            "sh",
            str(tmp_path / "photo.jpg"),
            str(folder),
        ],
        check=True,
    )
    assert ok(spool, "sweep")["dropin"]["enqueued"] == [{"type": "Thumb", "id": "photo.jpg"}]
    stored = spool.start(spool.claim("t")[0]).input
    assert Path(stored).read_bytes() == b"JPEG" and Path(stored).parent == spool.files_dir("Thumb", "photo.jpg")


@needs_sequence_sum
def test_handlers_lists_the_installed_handler_packages() -> None:
    found = {h["name"]: h for h in ok(None, "handlers")["handlers"]}
    assert found["sequence_sum"]["distribution"] == "spoolatp-sequence-sum"
    assert found["sequence_sum"]["version"]


# --------------------------------------------------------------------------- with a daemon


@pytest.fixture
def daemon(spool: Spool) -> Iterator[subprocess.Popen[bytes]]:
    args = ["daemon", "--workers", "1", "--grace", "2", "--log-level", "WARNING"]
    proc = subprocess.Popen([sys.executable, "-m", "spoolatp", "--spool", str(spool.path), *args], env=_env())
    try:
        deadline = time.monotonic() + 15
        while not spool.daemons() and proc.poll() is None and time.monotonic() < deadline:
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
    assert proc.returncode == 0, "the daemon did not stop cleanly on SIGTERM"


@needs_sequence_sum
def test_enqueue_wait_prints_the_result_the_daemon_computed(spool: Spool, daemon: subprocess.Popen[bytes]) -> None:
    proc = run(spool, "enqueue", TYPE, "Task001", "[1, 2, 3, 4, 5]", "--wait", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "15.0\n"
    doc = ok(spool, "enqueue", TYPE, "Task002", "[1, 2]", "--wait", "--timeout", "30")
    assert doc["state"] == "FINISHED" and doc["response"]["response"] == "3.0" and doc["key"]


@needs_sequence_sum
@needs_testing
def test_enqueue_wait_of_a_failing_task_exits_5(spool: Spool, daemon: subprocess.Popen[bytes]) -> None:
    run(spool, "register", "Boom", "testing.raise")
    proc = run(spool, "enqueue", "Boom", "b1", '"kaput"', "--wait", "--timeout", "30")
    fails(proc, 5, "task 'Boom'/'b1' FAILED: RuntimeError: kaput")
    assert proc.stdout == "FAILED\n"


@needs_sequence_sum
def test_daemon_burst_drains_the_queue_and_exits_0(spool: Spool) -> None:
    for i in range(3):
        spool.enqueue(TYPE, f"T{i}", [i, 1])
    proc = run(spool, "daemon", "--burst", "--workers", "1", "--log-level", "WARNING")
    assert proc.returncode == 0, proc.stderr
    assert [spool.status(TYPE, f"T{i}") for i in range(3)] == [State.FINISHED] * 3


@needs_sequence_sum
def test_demo_prints_what_the_guide_prints() -> None:
    proc = run(None, "demo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} Status:  ENQUEUED", lines[0])
    assert lines.index("Processing history:") > 0
    history = lines[lines.index("Processing history:") + 1 : -1]
    assert [re.fullmatch(r"- \S+ \S+ Status: (\w+) \t.*", h).group(1) for h in history] == [  # type: ignore[union-attr]
        "ENQUEUED",
        "SCHEDULED",
        "RUNNING",
        "FINISHED",
    ]
    assert lines[-1] == "Result: 15.0"


@needs_sequence_sum
def test_demo_json_uses_the_given_spool_and_leaves_it_clean(spool: Spool) -> None:
    doc = ok(spool, "demo")
    assert doc["state"] == "FINISHED" and doc["result"] == "15.0" and doc["spool"] == str(spool.path)
    assert [r["state"] for r in doc["log"]][-1] == "FINISHED"
    assert list(spool.tasks()) == []


def test_demo_without_the_handler_says_how_to_install_it() -> None:
    proc = run(None, "demo", env=_env(SPOOLATP_DISABLE_PLUGIN_AUTOLOAD="1"))
    fails(proc, 1, "pip install spoolatp-sequence-sum")
