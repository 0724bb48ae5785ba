"""Scheduling and control, through real daemons: retries, delays, priorities, cancel, re-run."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_daemon import start_daemon, stop, wait_for

from spoolatp import Spool, State

pytestmark = pytest.mark.timeout(120)


def test_failing_handler_finishes_after_two_logged_retries_with_growing_delays(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Flaky", "testing.flaky", retries=3, backoff=0.4, backoff_max=10)
    spool.enqueue("Flaky", "f", {"fail": 2, "counter": str(tmp_path / "count")})
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.status("Flaky", "f") is State.FINISHED, 60, "the flaky task to finish")
    assert stop(daemons[0]) == 0
    log = spool.log("Flaky", "f")
    retries = [r for r in log if r.retry]
    assert [r.retry for r in retries] == [1, 2]
    assert all("flaky failure on attempt" in r.message for r in retries)
    delays = [float(r.message.split(" in ")[1].split(" s")[0]) for r in retries]
    assert 0.2 <= delays[0] <= 0.4 and 0.4 <= delays[1] <= 0.8 and delays[1] >= delays[0]
    runs = [r.time for r in log if r.state is State.RUNNING]
    assert len(runs) == 3
    # no retry started early (the logged delays are rounded to 0.1 s)
    assert runs[1] - runs[0] >= delays[0] - 0.05 and runs[2] - runs[1] >= delays[1] - 0.05
    assert spool.response("Flaky", "f")[0] == "ok on attempt 3"


def test_retries_used_up_fail_the_task_with_the_last_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Flaky", "testing.flaky", retries=1, backoff=0.05)
    spool.enqueue("Flaky", "f", {"fail": 5, "counter": str(tmp_path / "count")})
    proc = start_daemon(spool, "--workers", "1")
    try:
        wait_for(lambda: spool.status("Flaky", "f") is State.FAILED, 60, "the task to fail")
    finally:
        assert stop(proc) == 0
    last = spool.log("Flaky", "f")[-1]
    assert "flaky failure on attempt 2" in last.message and "retries used up (1 of 1)" in last.message


def test_handler_raising_retry_is_run_again_after_its_own_delay(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Flaky", "testing.flaky", retries=2, backoff=100)  # the handler's delay wins
    spool.enqueue("Flaky", "r", {"fail": 1, "counter": str(tmp_path / "count"), "retry_delay": 0.5})
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.status("Flaky", "r") is State.FINISHED, 30, "the task to finish")
    assert stop(daemons[0]) == 0
    log = spool.log("Flaky", "r")
    [retry] = [r for r in log if r.retry]
    assert "retry 1 of 2 in 0.5 s" in retry.message and "attempt 1 asks for a retry" in retry.message
    runs = [r.time for r in log if r.state is State.RUNNING]
    assert 0.5 <= runs[1] - runs[0] < 5


def test_delayed_task_does_not_start_early_and_starts_on_time(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    daemons.append(start_daemon(spool, "--workers", "1"))
    time.sleep(1)  # an idle daemon
    enqueued = spool.clock()
    spool.enqueue("Echo", "later", 1, not_before=1.5)
    spool.enqueue("Echo", "at", 2, not_before=datetime.now() + timedelta(seconds=1))
    spool.enqueue("Echo", "now", 3)
    assert spool.info("Echo", "later").not_before == pytest.approx(enqueued + 1.5, abs=0.2)
    wait_for(lambda: spool.status("Echo", "now") is State.FINISHED, 10, "the undelayed task")
    wait_for(lambda: spool.status("Echo", "later") is State.FINISHED, 10, "the delayed task")
    started = {t: next(r.time for r in spool.log("Echo", t) if r.state is State.RUNNING) for t in ("later", "at")}
    assert enqueued + 1.5 <= started["later"] < enqueued + 1.5 + 2.0  # on time: within moments of its due time
    assert enqueued + 0.9 <= started["at"] < enqueued + 3.0
    assert stop(daemons[0]) == 0


def test_bad_delays_and_priorities_are_refused_with_nothing_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    with pytest.raises(ValueError, match="must not be negative"):
        spool.enqueue("Echo", "a", 1, not_before=-1)
    with pytest.raises(ValueError, match="limit is 100 years"):
        spool.enqueue("Echo", "far", 1, not_before=1e12)  # due names would overflow in 2554
    with pytest.raises(ValueError, match="a datetime or a number of seconds"):
        spool.enqueue("Echo", "inf", 1, not_before=float("inf"))
    with pytest.raises(ValueError, match="priority must be a whole number from 0"):
        spool.enqueue("Echo", "b", 1, priority=10)
    with pytest.raises(ValueError, match="priority"):
        spool.register_type("Bad", "testing.echo", priority=-1)
    assert spool.counts()["ENQUEUED"] == 0 and not list((spool.path / "ids").iterdir())


def test_one_worker_runs_the_high_priority_task_next(tmp_path: Path, daemons: list[subprocess.Popen[bytes]]) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", priority=2)
    for n in range(6):
        spool.enqueue("Sleep", f"low{n}", 0.3)
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.counts()["RUNNING"] == 1, 30, "the first low task to run")
    spool.enqueue("Sleep", "urgent", 0.1, priority=9)
    wait_for(lambda: spool.status("Sleep", "urgent") is State.FINISHED, 30, "the urgent task")
    finished_before = [i.task_id for i in spool.tasks(State.FINISHED) if i.task_id != "urgent"]
    assert len(finished_before) <= 1  # it overtook every waiting low-priority task
    assert spool.info("Sleep", "urgent").priority == 9
    assert stop(daemons[0]) == 0


def test_cancel_of_an_enqueued_task_ends_it_failed_with_who_cancelled(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    spool.enqueue("Echo", "x", 1)
    spool.enqueue("Echo", "later", 1, not_before=60)
    assert spool.cancel("Echo", "x", by="alice") is State.FAILED
    assert spool.cancel("Echo", "later", by="bob") is State.FAILED
    assert spool.log("Echo", "x")[-1].message == "cancelled by alice"
    assert spool.log("Echo", "later")[-1].message == "cancelled by bob"
    with pytest.raises(ValueError, match="already FAILED"):
        spool.cancel("Echo", "x")
    assert spool.counts()["ENQUEUED"] == 0


def test_cancel_of_a_running_task_stops_a_cooperative_handler(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep")
    spool.enqueue("Sleep", "s", {"seconds": 30, "steps": 300})
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.status("Sleep", "s") is State.RUNNING, 30, "the task to run")
    asked = time.monotonic()
    assert spool.cancel("Sleep", "s", by="carol") is State.RUNNING
    assert spool.info("Sleep", "s").cancel_requested == "carol"
    wait_for(lambda: spool.status("Sleep", "s") is State.FAILED, 10, "the task to stop")
    assert time.monotonic() - asked < 5  # it stopped at its next step, long before its 10 s grace
    log = spool.log("Sleep", "s")
    assert any(r.message.startswith("cancelled after step") for r in log)
    assert log[-1].message == "cancelled by carol; the handler stopped when asked"
    assert stop(daemons[0]) == 0


def test_cancel_of_a_running_task_kills_a_handler_that_ignores_it(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Hang", "testing.hang")
    spool.register_type("Echo", "testing.echo")
    spool.enqueue("Hang", "h", None)
    daemons.append(start_daemon(spool, "--workers", "1", "--cancel-grace", "1"))
    wait_for(lambda: spool.status("Hang", "h") is State.RUNNING, 30, "the task to run")
    spool.cancel("Hang", "h", by="dave")
    wait_for(lambda: spool.status("Hang", "h") is State.FAILED, 15, "the task to be killed")
    assert spool.log("Hang", "h")[-1].message == "cancelled by dave; killed after ignoring it for 1 s"
    spool.enqueue("Echo", "after", 1)
    wait_for(lambda: spool.status("Echo", "after") is State.FINISHED, 15, "the daemon to go on")
    assert stop(daemons[0]) == 0


def test_rerun_of_a_failed_task_keeps_its_history_and_runs_it_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Flaky", "testing.flaky")
    spool.enqueue("Flaky", "f", {"fail": 1, "counter": str(tmp_path / "count")})
    assert subprocess.run(_burst(spool), timeout=60).returncode == 0
    assert spool.status("Flaky", "f") is State.FAILED
    before = spool.log("Flaky", "f")
    spool.rerun("Flaky", "f", by="erin")
    assert spool.status("Flaky", "f") is State.ENQUEUED
    with pytest.raises(ValueError, match="only FAILED tasks"):
        spool.rerun("Flaky", "f")
    assert subprocess.run(_burst(spool), timeout=60).returncode == 0
    after = spool.log("Flaky", "f")
    assert spool.status("Flaky", "f") is State.FINISHED
    assert after[: len(before)] == before
    assert any(r.message == "re-run requested by erin" for r in after)


def _burst(spool: Spool) -> list[str]:
    import sys

    return [sys.executable, "-m", "spoolatp", "daemon", "--spool", str(spool.path), "--workers", "1", "--burst"]
