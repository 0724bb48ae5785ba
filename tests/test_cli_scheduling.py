"""Scheduling from the command line and from drop-ins: priority, delays, cancel and retry.

Real subprocesses (``python -m spoolatp``), real daemons (``daemon --burst``,
or one in the background stopped by its own pid), real handlers from the
installed ``spoolatp-testing`` package. Each test states its claim in its
name and checks exit codes and ``--json`` documents.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_cli import fails

from spoolatp import dropin
from spoolatp.spool import Spool


def _loads(name: str) -> bool:
    try:
        from spoolatp import plugins

        plugins.load_handler(name)
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not all(_loads(f"testing.{h}") for h in ("echo", "sleep", "raise")),
    reason="spoolatp.plugins cannot load the testing.* handlers: pip install ./handlers/testing",
)

ECHO, SLEEP, BOOM, HANG = "Echo", "Sleep", "Boom", "Hang"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPOOLATP_SPOOL", "SPOOLATP_DEBUG")}
    return {**env, "PYTHONWARNINGS": "error"}


def _command(spool: Spool, *args: str) -> list[str]:
    return [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), *args]


def run(spool: Spool, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(spool, *args), capture_output=True, text=True, env=_env(), timeout=60)


def run_all(spool: Spool, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run several commands at once (they are independent); return their results in order."""
    procs = [
        subprocess.Popen(_command(spool, *c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for c in commands
    ]
    out = []
    for command, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(list(command), proc.returncode, stdout, stderr))
    return out


def ok(spool: Spool, *args: str) -> Any:
    """Run a ``--json`` command that must succeed; return its document."""
    proc = run(spool, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def usage_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    """Click's usage error: exit 2, the reason on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def burst(spool: Spool) -> None:
    proc = run(spool, "daemon", "--burst", "--workers", "1", "--log-level", "WARNING")
    assert proc.returncode == 0, proc.stderr


def log_messages(spool: Spool, type_id: str, task_id: str) -> list[tuple[str, str]]:
    return [(r["state"], r["message"]) for r in ok(spool, "log", type_id, task_id)["log"]]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    dropin.prepare(spool)
    spool.register_type(ECHO, "testing.echo", 30)
    spool.register_type(SLEEP, "testing.sleep", 60)
    spool.register_type(BOOM, "testing.raise", 30)
    spool.register_type(HANG, "testing.hang", 60)
    return spool


@pytest.fixture
def daemon(spool: Spool, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A daemon with one worker in the background, stopped by its own pid."""
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 -- closed below, after the daemon
    proc = subprocess.Popen(
        _command(spool, "daemon", "--workers", "1", "--server-id", "bg-daemon", "--grace", "5", "--cancel-grace", "1"),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# --------------------------------------------------------------------------- help


def test_cancel_and_retry_have_help_with_examples_and_enqueue_and_register_show_the_new_options(
    spool: Spool,
) -> None:
    cancel, retry, enqueue, register = run_all(
        spool, ("cancel", "--help"), ("retry", "--help"), ("enqueue", "--help"), ("register", "--help")
    )
    assert cancel.returncode == retry.returncode == enqueue.returncode == register.returncode == 0
    assert "Example" in cancel.stdout and "spoolatp cancel SequenceSum Task001" in cancel.stdout
    assert "spoolatp retry SequenceSum Task001" in retry.stdout and "retry --type SequenceSum --failed" in retry.stdout
    assert all(o in enqueue.stdout for o in ("--priority", "--delay", "--at", "--delay 600"))
    assert all(o in register.stdout for o in ("--priority", "--retries", "--backoff", "--backoff-max"))


# --------------------------------------------------------------------------- enqueue --priority / --delay / --at


def test_enqueue_priority_shows_in_status_and_list_and_runs_first(spool: Spool) -> None:
    spool.register_type("Low", "testing.echo", 30, priority=2)
    assert ok(spool, "enqueue", "Low", "default", "1")["priority"] == 2  # the type's
    doc = ok(spool, "enqueue", "Low", "urgent", "2", "--priority", "8")
    assert (doc["state"], doc["code"], doc["priority"], doc["not_before"]) == ("ENQUEUED", 1, 8, None)
    status = ok(spool, "status", "Low", "urgent")
    assert (status["priority"], status["not_before"], status["cancel_requested"]) == (8, None, None)
    assert "priority  8" in run(spool, "status", "Low", "urgent").stdout.splitlines()
    listed = ok(spool, "list")["tasks"]
    assert [(t["id"], t["priority"]) for t in listed] == [("urgent", 8), ("default", 2)]  # most urgent first
    text = run(spool, "list").stdout.splitlines()
    assert text[0].split()[-1] == "NOTE" and text[1].split()[2] == "urgent" and text[1].endswith("priority 8")


def test_enqueue_delay_holds_the_task_from_a_burst_daemon_until_due_and_a_past_at_runs_at_once(spool: Spool) -> None:
    soon = ok(spool, "enqueue", ECHO, "soon", '"hi"', "--delay", "2")
    held = ok(spool, "enqueue", ECHO, "held", "--delay", "3600")
    past = (datetime.now() - timedelta(hours=1)).replace(microsecond=0).isoformat()
    assert ok(spool, "enqueue", ECHO, "past", '"ho"', "--at", past)["not_before"] is None
    status = ok(spool, "status", ECHO, "soon")
    assert status["not_before"] == soon["not_before"] == pytest.approx(status["enqueued"] + 2, abs=0.5)
    burst(spool)
    assert ok(spool, "status", ECHO, "past")["state"] == "FINISHED"
    assert ok(spool, "status", ECHO, "held")["state"] == "ENQUEUED"  # not due: the burst daemon left it
    time.sleep(max(0.0, soon["not_before"] - spool.clock()) + 0.1)
    burst(spool)
    assert ok(spool, "result", ECHO, "soon")["response"] == '"hi"'  # due: it ran
    assert ok(spool, "status", ECHO, "held")["not_before"] == held["not_before"]


def test_enqueue_at_takes_iso_8601_with_a_zone_or_as_local_time(spool: Spool) -> None:
    target = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    zoned = target.astimezone(timezone(timedelta(hours=1))).isoformat()  # e.g. 2026-11-29T13:00:00+01:00
    naive = target.astimezone().replace(tzinfo=None).isoformat()  # the same instant in local time
    utc_z = target.strftime("%Y-%m-%dT%H:%M:%SZ")
    for task_id, when in (("naive", naive), ("z", utc_z), ("zoned", zoned)):
        doc = ok(spool, "enqueue", ECHO, task_id, "--at", when)
        assert doc["not_before"] == pytest.approx(target.timestamp(), abs=2), when  # the spool clock is this host's
    assert ok(spool, "status", ECHO, "zoned")["not_before"] == doc["not_before"]
    lines = run(spool, "status", ECHO, "zoned").stdout.splitlines()
    assert [line for line in lines if line.startswith("due ")] == [
        f"due       {target.astimezone().isoformat()} (in 1h59m)"
    ]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--priority", "10"), "10 is not in the range 0<=x<=9"),
        (("--priority", "-1"), "is not in the range 0<=x<=9"),
        (("--priority", "high"), "'high' is not a valid integer"),
        (("--delay", "-5"), "must not be negative"),
        (("--delay", "nan"), "finite number of seconds"),
        (("--delay", "soon"), "'soon' is not a number of seconds"),
        (("--at", "tomorrow"), "'tomorrow' is not an ISO 8601 time"),
        (("--at", "2026-13-01T00:00:00"), "is not an ISO 8601 time"),
        (("--at", "3000-01-01T00:00:00"), "more than 100 years from now"),
        (("--delay", "5", "--at", "2026-11-29T12:00:00"), "give --delay or --at, not both"),
    ],
)
def test_bad_priority_delay_or_at_is_a_usage_error_and_enqueues_nothing(
    spool: Spool, args: tuple[str, ...], text: str
) -> None:
    usage_error(run(spool, "enqueue", ECHO, "x", *args), text)
    assert ok(spool, "list")["count"] == 0


# --------------------------------------------------------------------------- register


def test_register_scheduling_options_show_in_register_and_types_json(spool: Spool) -> None:
    doc = ok(spool, "register", "Retry", "testing.echo", "--priority", "8", "--retries", "3", "--backoff", "0.5")
    assert {k: doc[k] for k in ("priority", "retries", "backoff", "backoff_max")} == {
        "priority": 8,
        "retries": 3,
        "backoff": 0.5,
        "backoff_max": 300.0,
    }
    listed = {t["name"]: t for t in ok(spool, "types")["types"]}
    assert listed["Retry"] == doc and listed[ECHO]["retries"] == 0 and listed[ECHO]["priority"] == 5
    header = run(spool, "types").stdout.splitlines()[0].split()
    assert "PRIORITY" in header and "RETRIES" in header
    bad_max, bad_priority, bad_retries = run_all(
        spool,
        ("register", "X", "testing.echo", "--backoff", "10", "--backoff-max", "5"),
        ("register", "X", "testing.echo", "--priority", "10"),
        ("register", "X", "testing.echo", "--retries", "-1"),
    )
    usage_error(bad_max, "5 is below --backoff 10")
    usage_error(bad_priority, "not in the range 0<=x<=9")
    usage_error(bad_retries, "not in the range x>=0")
    assert "X" not in {t["name"] for t in ok(spool, "types")["types"]}


# --------------------------------------------------------------------------- cancel


def test_cancel_of_an_enqueued_or_delayed_task_fails_it_at_once_saying_who(spool: Spool) -> None:
    spool.enqueue(ECHO, "waiting", 1)
    spool.enqueue(ECHO, "delayed", 2, not_before=3600)
    doc = ok(spool, "cancel", ECHO, "waiting")
    assert doc == {"type": ECHO, "id": "waiting", "state": "FAILED", "code": 6, "requested": False, "server": None}
    proc = run(spool, "cancel", ECHO, "delayed")
    assert proc.returncode == 0 and proc.stdout == f"{ECHO}/delayed cancelled (FAILED)\n"
    for task_id in ("waiting", "delayed"):
        assert ok(spool, "status", ECHO, task_id)["state"] == "FAILED"
        state, message = log_messages(spool, ECHO, task_id)[-1]
        assert state == "FAILED" and message.startswith("cancelled by ") and message.endswith("(spoolatp cancel)")
        assert "@" in message


def _wait_running(spool: Spool, type_id: str, task_id: str, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while spool.status(type_id, task_id).name != "RUNNING":
        assert time.monotonic() < deadline and daemon.poll() is None, "the daemon never started the task"
        time.sleep(0.05)


def test_cancel_of_a_running_task_ends_it_failed_within_seconds(spool: Spool, daemon: subprocess.Popen[bytes]) -> None:
    spool.enqueue(SLEEP, "long", {"seconds": 30, "steps": 60})
    _wait_running(spool, SLEEP, "long", daemon)
    started = time.monotonic()
    proc = run(spool, "cancel", SLEEP, "long")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{SLEEP}/long cancel requested; RUNNING on bg-daemon\n"
    status = ok(spool, "status", SLEEP, "long")
    assert status["state"] == "FAILED" or status["cancel_requested"].endswith("(spoolatp cancel)")
    waited = run(spool, "wait", SLEEP, "long", "--timeout", "15")
    assert waited.returncode == 5, (waited.stdout, waited.stderr)  # FAILED
    assert time.monotonic() - started < 10  # 30 s of sleep cut short
    state, message = [m for m in log_messages(spool, SLEEP, "long") if m[0] == "FAILED"][-1]
    assert "cancelled by " in message and "(spoolatp cancel)" in message
    fails(run(spool, "cancel", SLEEP, "long"), 1, "is already FAILED")


def test_a_handler_that_ignores_a_cancel_is_killed_after_the_daemons_cancel_grace(
    spool: Spool, daemon: subprocess.Popen[bytes]
) -> None:
    spool.enqueue(HANG, "stuck", None)
    _wait_running(spool, HANG, "stuck", daemon)
    doc = ok(spool, "cancel", HANG, "stuck")
    assert doc == {"type": HANG, "id": "stuck", "state": "RUNNING", "code": 3, "requested": True, "server": "bg-daemon"}
    assert run(spool, "wait", HANG, "stuck", "--timeout", "15").returncode == 5
    message = [m for s, m in log_messages(spool, HANG, "stuck") if s == "FAILED"][-1]
    assert "cancelled by " in message and "killed after ignoring it for 1 s" in message


def test_cancel_of_a_finished_task_is_exit_1_and_of_a_missing_one_exit_3(spool: Spool) -> None:
    spool.enqueue(ECHO, "done", 1)
    burst(spool)
    finished, missing = run_all(spool, ("cancel", ECHO, "done"), ("cancel", ECHO, "nope", "--json"))
    fails(finished, 1, f"task '{ECHO}'/'done' is already FINISHED")
    fails(missing, 3, "not found")
    assert missing.stdout == ""
    assert ok(spool, "status", ECHO, "done")["state"] == "FINISHED"


# --------------------------------------------------------------------------- retry


def test_retry_puts_a_failed_task_back_keeping_its_history(spool: Spool) -> None:
    spool.enqueue(BOOM, "b1", "kaput")
    burst(spool)
    assert ok(spool, "status", BOOM, "b1")["state"] == "FAILED"
    before = log_messages(spool, BOOM, "b1")
    assert ok(spool, "retry", BOOM, "b1") == {"retried": [{"type": BOOM, "id": "b1"}], "count": 1}
    assert ok(spool, "status", BOOM, "b1")["state"] == "ENQUEUED"
    after = log_messages(spool, BOOM, "b1")
    assert after[: len(before)] == before and any("kaput" in m for s, m in before if s == "FAILED")
    assert after[-1][0] == "ENQUEUED" and after[-1][1].startswith("re-run requested by ")
    assert after[-1][1].endswith("(spoolatp retry)")
    enqueued, missing = run_all(spool, ("retry", BOOM, "b1"), ("retry", BOOM, "nope"))
    fails(enqueued, 1, "is ENQUEUED; only FAILED tasks can be re-run")
    fails(missing, 3, "not found")
    burst(spool)  # it runs again, and fails again
    assert ok(spool, "status", BOOM, "b1")["attempts"] == 2


def test_retry_type_failed_reenqueues_every_failed_task_of_that_type_only(spool: Spool) -> None:
    for type_id, task_id in ((BOOM, "a"), (BOOM, "b"), (ECHO, "c")):
        spool.enqueue(type_id, task_id, None)
        spool.cancel(type_id, task_id, by="the test")  # FAILED at once
    spool.enqueue(BOOM, "waiting", None)
    doc = ok(spool, "retry", "--type", BOOM, "--failed")
    assert doc == {"retried": [{"type": BOOM, "id": "a"}, {"type": BOOM, "id": "b"}], "count": 2}
    states = {t["id"]: t["state"] for t in ok(spool, "list")["tasks"]}
    assert states == {"a": "ENQUEUED", "b": "ENQUEUED", "c": "FAILED", "waiting": "ENQUEUED"}
    again, text = run_all(spool, ("retry", "--type", BOOM, "--failed", "--json"), ("retry", "--type", ECHO, "--failed"))
    assert json.loads(again.stdout) == {"retried": [], "count": 0}
    assert text.returncode == 0 and text.stdout == f"{ECHO}/c re-enqueued\n"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((), "give TYPE ID of one task, or --type TYPE --failed"),
        ((BOOM,), "give TYPE ID of one task, or --type TYPE --failed"),
        (("--type", BOOM), "add --failed to re-run every FAILED task"),
        (("--failed",), "--failed goes with --type TYPE"),
        ((BOOM, "a", "--type", BOOM, "--failed"), "not both"),
    ],
)
def test_retry_needs_one_task_or_an_explicit_type_and_failed(spool: Spool, args: tuple[str, ...], text: str) -> None:
    usage_error(run(spool, "retry", *args), text)


def test_retry_of_an_unknown_type_is_an_error_not_nothing_to_do(spool: Spool) -> None:
    fails(run(spool, "retry", "--type", "Typo", "--failed"), 1, "'Typo'")


# --------------------------------------------------------------------------- drop-ins


def _drop(spool: Spool, name: str, doc: Any, *, mtime: float | None = None) -> None:
    base = spool.path / "drop"
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (base / f".{name}").write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(base / f".{name}", (mtime, mtime))
    os.rename(base / f".{name}", base / name)  # the producers' convention: write, then rename


def test_drop_ins_with_priority_and_not_before_are_ingested_by_sweep(spool: Spool) -> None:
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=3)
    now = time.time()
    _drop(spool, "urgent.json", {"type": ECHO, "input": 1, "priority": 9})
    _drop(spool, "later.json", {"type": ECHO, "not_before": 3600})
    _drop(spool, "written.json", {"type": ECHO, "not_before": 100}, mtime=now - 60)  # waited 60 s for ingest
    _drop(spool, "at.json", {"type": ECHO, "not_before": at.isoformat(), "priority": 1})
    _drop(spool, "nulls.json", {"type": ECHO, "priority": None, "not_before": None})
    report = ok(spool, "sweep")["dropin"]
    assert sorted(t["id"] for t in report["enqueued"]) == ["at", "later", "nulls", "urgent", "written"]
    assert report["rejected"] == [] and dropin.pending(spool) == []
    status = {i: ok(spool, "status", ECHO, i) for i in ("urgent", "later", "written", "at", "nulls")}
    assert (status["urgent"]["priority"], status["urgent"]["not_before"]) == (9, None)
    assert status["later"]["not_before"] == pytest.approx(now + 3600, abs=5)
    assert status["written"]["not_before"] == pytest.approx(now + 40, abs=5)  # counted from when it was written
    assert status["at"]["not_before"] == pytest.approx(at.timestamp(), abs=2) and status["at"]["priority"] == 1
    assert (status["nulls"]["priority"], status["nulls"]["not_before"]) == (5, None)
    burst(spool)
    assert ok(spool, "status", ECHO, "urgent")["state"] == "FINISHED"
    assert ok(spool, "status", ECHO, "later")["state"] == "ENQUEUED"


BAD_DROP_INS = [
    ("p10.json", {"priority": 10}, '"priority" must be a whole number from 0 (least urgent) to 9'),
    ("pstr.json", {"priority": "5"}, 'not "5"'),
    ("pbool.json", {"priority": True}, "not true"),
    ("pfloat.json", {"priority": 1.5}, "not 1.5"),
    ("neg.json", {"not_before": -1}, '"not_before": a delay must not be negative'),
    ("huge.json", '{"type": "Echo", "not_before": 1e400}', '"not_before": a delay must be a finite number'),
    ("word.json", {"not_before": "soon"}, "\"not_before\": 'soon' is not an ISO 8601 time"),
    ("far.json", {"not_before": "2999-01-01T00:00:00Z"}, "more than 100 years from now"),
    ("kind.json", {"not_before": [60]}, '"not_before" must be a number of seconds'),
    ("flag.json", {"not_before": False}, "not true/false"),
]


def test_bad_priority_or_not_before_drop_ins_are_rejected_with_the_reason(spool: Spool) -> None:
    for name, doc, _ in BAD_DROP_INS:
        _drop(spool, name, doc if isinstance(doc, str) else {"type": ECHO, **doc})
    report = ok(spool, "sweep")["dropin"]
    assert report["enqueued"] == []
    reasons = {r["file"]: r["reason"] for r in report["rejected"]}
    assert sorted(reasons) == sorted(name for name, _, _ in BAD_DROP_INS)
    for name, _, reason in BAD_DROP_INS:
        assert reason in reasons[name], (name, reasons[name])
        error = (spool.path / "drop" / "rejected" / f"{name}.error").read_text(encoding="utf-8")
        assert error.splitlines()[0] == reasons[name]
    assert ok(spool, "list")["count"] == 0
