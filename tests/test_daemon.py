"""The daemon, run for real: `python -m spoolatp daemon` subprocesses against real spools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from spoolatp import Spool, State

pytestmark = pytest.mark.timeout(180)


def start_daemon(spool: Spool, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "spoolatp", "daemon", "--spool", str(spool.path), "--log-level", "INFO", *args]
    with open(log or spool.path.parent / "daemon.log", "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def wait_for(cond: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def terminal_entries(spool: Spool, t: str, i: str) -> list[State]:
    return [r.state for r in spool.log(t, i) if r.state is not None and r.state.terminal]


def all_terminal(spool: Spool, n: int) -> Callable[[], bool]:
    def check() -> bool:
        c = spool.counts()
        return c["FINISHED"] + c["FAILED"] == n

    return check


def marker_counts(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def test_guide_flow_runs_sequence_sum_through_a_real_daemon(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    daemons.append(start_daemon(spool, "--workers", "1"))
    producer = tmp_path / "producer.py"
    producer.write_text(
        "import time\n"
        "from spoolatp.tracker import registerTaskType, enqueueTask, QueueFull, getTaskStatusByIdentifier,"
        " getTaskResponse, deleteTaskByIdentifier, getTaskLog\n"
        "registerTaskType('SequenceSum', 'sequence_sum', 60, 600, 3)\n"
        "while True:\n"
        "    try:\n"
        "        enqueueTask('SequenceSum', 'Task001', (1, 2, 3, 4, 5))\n"
        "        break\n"
        "    except QueueFull:\n"
        "        time.sleep(5)\n"
        "while True:\n"
        "    status = getTaskStatusByIdentifier('SequenceSum', 'Task001')\n"
        "    print(time.asctime(), 'Status: ', status[1])\n"
        "    if status[1] in ('FINISHED', 'FAILED'): break\n"
        "    time.sleep(0.1)\n"
        "print('Processing history:')\n"
        "for rec in getTaskLog('SequenceSum', 'Task001'):\n"
        "    print('-', rec[0], 'Status: ', rec[1][1], '\\t', rec[2])\n"
        "if status[1] == 'FINISHED':\n"
        "    print('Result: ', getTaskResponse('SequenceSum', 'Task001'))\n"
        "deleteTaskByIdentifier('SequenceSum', 'Task001')\n"
    )
    env = {**os.environ, "SPOOLATP_SPOOL": str(spool.path)}
    out = subprocess.run([sys.executable, str(producer)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Result:  ('15.0', 'text/xml')" in out.stdout
    for state in ("ENQUEUED", "SCHEDULED", "RUNNING", "FINISHED"):
        assert f"Status:  {state}" in out.stdout
    assert stop(daemons[0]) == 0
    assert spool.counts() == {s.name: 0 for s in State}


def test_thousand_tasks_through_four_workers_each_run_exactly_once(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    marker = tmp_path / "ran.txt"
    spool.register_type("Mark", "testing.marker", timeout=60)
    for n in range(1000):
        spool.enqueue("Mark", f"t{n:04d}", {"path": str(marker)})
    daemons.append(start_daemon(spool, "--workers", "4"))
    wait_for(all_terminal(spool, 1000), 120, "1000 tasks to end")
    assert stop(daemons[0]) == 0
    assert spool.counts()["FINISHED"] == 1000
    ran = marker_counts(marker)
    assert len(ran) == 1000 and set(ran.values()) == {1}


def test_hanging_handler_is_killed_at_timeout_retried_up_to_maxrestart_then_failed(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Hang", "testing.hang", timeout=0.5, maxrestart=2)
    spool.register_type("Echo", "testing.echo")
    spool.enqueue("Hang", "h1", None)
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.status("Hang", "h1") is State.FAILED, 60, "the hanging task to fail")
    log = spool.log("Hang", "h1")
    kills = [r for r in log if "timeout" in r.message and "killed" in r.message]
    assert len(kills) == 3  # the first attempt and two restarts
    assert "restart limit of 2 used up" in log[-1].message
    assert sum(1 for r in log if r.state is State.RUNNING) == 3
    # the daemon goes on serving
    spool.enqueue("Echo", "after", "hello")
    wait_for(lambda: spool.status("Echo", "after") is State.FINISHED, 30, "the next task")
    assert stop(daemons[0]) == 0


def test_handler_exiting_abruptly_fails_cleanly_and_the_daemon_goes_on(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Exit", "testing.exit", maxrestart=0)
    spool.register_type("Raise", "testing.raise")
    spool.register_type("Echo", "testing.echo")
    spool.enqueue("Exit", "e1", 7)
    spool.enqueue("Raise", "r1", "boom from the handler")
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: spool.status("Exit", "e1").terminal and spool.status("Raise", "r1").terminal, 30, "both to end")
    assert spool.status("Exit", "e1") is State.FAILED
    assert "exited with status 7" in spool.log("Exit", "e1")[-1].message
    assert spool.status("Raise", "r1") is State.FAILED
    assert "boom from the handler" in spool.log("Raise", "r1")[-1].message
    assert "Traceback" in spool.log("Raise", "r1")[-1].message
    spool.enqueue("Echo", "after", [1, 2])
    wait_for(lambda: spool.status("Echo", "after") is State.FINISHED, 30, "the next task")
    assert daemons[0].poll() is None
    assert stop(daemons[0]) == 0


def test_kill_9_mid_run_then_restart_loses_nothing_and_finishes_nothing_twice(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    marker = tmp_path / "ran.txt"
    spool.register_type("Mark", "testing.marker", timeout=60, maxrestart=5)
    for n in range(200):
        spool.enqueue("Mark", f"t{n:03d}", {"path": str(marker), "sleep": 0.01})
    first = start_daemon(spool, "--workers", "2", "--server-id", "box")
    daemons.append(first)
    wait_for(lambda: len(marker_counts(marker)) >= 40, 60, "some tasks to run")
    first.kill()
    first.wait(10)
    assert spool.counts()["FINISHED"] < 200
    daemons.append(start_daemon(spool, "--workers", "2", "--server-id", "box"))
    wait_for(all_terminal(spool, 200), 120, "all tasks to end after the restart")
    assert stop(daemons[1]) == 0
    assert spool.counts()["FINISHED"] == 200
    for n in range(200):
        assert terminal_entries(spool, "Mark", f"t{n:03d}") == [State.FINISHED]
    assert set(marker_counts(marker)) == {f"Mark/t{n:03d}" for n in range(200)}


def test_sigterm_during_work_gives_running_tasks_back_without_counting_an_attempt(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=60, maxrestart=0)
    for n in range(4):
        spool.enqueue("Sleep", f"s{n}", 30)
    d = start_daemon(spool, "--workers", "2", "--grace", "0.5")
    daemons.append(d)
    wait_for(lambda: spool.counts()["RUNNING"] == 2, 30, "two tasks running")
    assert stop(d) == 0
    assert spool.counts()["ENQUEUED"] == 4  # nothing lost, nothing failed although maxrestart is 0
    for info in spool.tasks(State.ENQUEUED):
        assert info.restarts == 0


def test_second_signal_stops_at_once(tmp_path: Path, daemons: list[subprocess.Popen[bytes]]) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=60)
    spool.enqueue("Sleep", "s", 30)
    d = start_daemon(spool, "--workers", "1", "--grace", "60")
    daemons.append(d)
    wait_for(lambda: spool.counts()["RUNNING"] == 1, 30, "the task to run")
    d.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert d.poll() is None  # draining within its 60 s grace
    d.send_signal(signal.SIGINT)
    assert d.wait(15) == 0
    assert spool.status("Sleep", "s") is State.ENQUEUED


def test_two_daemons_share_the_work_without_running_any_task_twice(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    marker = tmp_path / "ran.txt"
    spool.register_type("Mark", "testing.marker", timeout=60)
    for n in range(400):
        spool.enqueue("Mark", f"t{n:03d}", {"path": str(marker), "sleep": 0.005})
    daemons.append(start_daemon(spool, "--workers", "2", "--server-id", "a"))
    daemons.append(start_daemon(spool, "--workers", "2", "--server-id", "b"))
    wait_for(all_terminal(spool, 400), 120, "all tasks to end")
    assert stop(daemons[0]) == 0 and stop(daemons[1]) == 0
    ran = marker_counts(marker)
    assert len(ran) == 400 and set(ran.values()) == {1}
    servers = Counter(
        r.server
        for info in spool.tasks(State.FINISHED)
        for r in spool.log("Mark", info.task_id)
        if r.state is State.FINISHED
    )
    assert set(servers) == {"a", "b"}


def test_burst_mode_drains_the_queue_and_exits_zero(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    for n in range(50):
        spool.enqueue("Echo", f"e{n}", n)
    proc = start_daemon(spool, "--workers", "2", "--burst")
    assert proc.wait(60) == 0
    assert spool.counts()["FINISHED"] == 50
    assert spool.response("Echo", "e7")[0] == "7"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_log_has_a_line_per_task_not_finished_and_a_count_per_heartbeat(tmp_path: Path, level: str) -> None:
    """Workers log each end themselves: FINISHED at DEBUG only; the main process counts the tasks that began."""
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    spool.register_type("Raise", "testing.raise")
    for n in range(3):
        spool.enqueue("Echo", f"e{n}", n)
    spool.enqueue("Raise", "r1", "boom")
    log = tmp_path / "d.log"
    proc = start_daemon(spool, "--workers", "2", "--burst", "--server-id", "logger-1", "--log-level", level, log=log)
    assert proc.wait(60) == 0
    text = log.read_text()
    assert text.count("[logger-1] task Raise/r1 attempt 1 FAILED in ") == 1
    finished = [f"[logger-1] task Echo/e{n} attempt 1 FINISHED in " for n in range(3)]
    assert [text.count(line) for line in finished] == ([1, 1, 1] if level == "DEBUG" else [0, 0, 0])
    # the workers write in the daemon's format, to its stderr
    assert all(line[:4].isdigit() and " spoolatp.workers: " in line for line in text.splitlines() if "Echo/e" in line)
    counts = [int(line.split("] ")[1].split()[0]) for line in text.splitlines() if " tasks began in the last " in line]
    assert sum(counts) == 4


def test_a_daemon_used_as_a_library_logs_its_workers_lines_through_the_applications_handlers(tmp_path: Path) -> None:
    """Worker records reach the main process's own handlers: a file, a {-style format, its level."""
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo")
    spool.register_type("Raise", "testing.raise")
    spool.enqueue("Echo", "e1", 1)
    spool.enqueue("Raise", "r1", "boom")
    app_log = tmp_path / "app.log"
    script = (
        "import logging, sys\n"
        "from spoolatp.daemon import Daemon\n"
        f"logging.basicConfig(filename={str(app_log)!r}, style='{{', format='{{levelname}}|{{name}}|{{message}}',"
        " level=logging.INFO)\n"
        f"sys.exit(Daemon({str(spool.path)!r}, workers=2, burst=True, server_id='lib-1').run())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = app_log.read_text().splitlines()
    assert "INFO|spoolatp.workers|[lib-1] task Raise/r1 attempt 1 FAILED in " in "\n".join(lines)
    assert not any("Echo/e1 attempt 1 FINISHED" in line for line in lines)  # DEBUG, below the app's level
    assert "Traceback" not in proc.stderr and "FAILED" not in proc.stderr  # nothing bypassed the handlers


def test_an_idle_daemon_does_not_spin_after_a_task_whose_timeout_is_shorter_than_its_heartbeat(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    """The main process forgets an idle worker's last deadline; waking for it again and again would spin."""
    spool = Spool(tmp_path / "spool")
    spool.register_type("Echo", "testing.echo", timeout=1)
    daemons.append(start_daemon(spool, "--workers", "2", "--heartbeat", "20", "--sweep-interval", "60"))
    spool.enqueue("Echo", "e1", 1)
    wait_for(lambda: spool.status("Echo", "e1") is State.FINISHED, 30, "the task to finish")
    time.sleep(1.5)  # past its timeout, long before the next heartbeat
    pid = daemons[0].pid

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    time.sleep(3)
    assert cpu() - before < 1.0  # a spin burns all 3 s; an idle daemon next to nothing
    assert stop(daemons[0]) == 0


def test_tasks_nobody_can_run_stay_enqueued_and_are_reported_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Alien", "no.such.handler")
    spool.register_type("Echo", "testing.echo")
    for n in range(3):
        spool.enqueue("Alien", f"a{n}", n)
    spool.enqueue("Echo", "e", 1)
    log = tmp_path / "d.log"
    proc = start_daemon(spool, "--workers", "1", "--burst", log=log)
    assert proc.wait(60) == 0
    assert spool.status("Echo", "e") is State.FINISHED
    assert [spool.status("Alien", f"a{n}") for n in range(3)] == [State.ENQUEUED] * 3
    text = log.read_text()
    assert text.count("no handler 'no.such.handler' is installed") == 1


def test_progress_and_log_calls_appear_while_the_task_runs(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=60)
    spool.enqueue("Sleep", "s", {"seconds": 3, "steps": 6})
    daemons.append(start_daemon(spool, "--workers", "1"))
    wait_for(lambda: (spool.info("Sleep", "s").progress or 0) > 0, 30, "progress to be reported")
    assert spool.status("Sleep", "s") is State.RUNNING
    wait_for(lambda: spool.status("Sleep", "s") is State.FINISHED, 30, "the task to finish")
    assert spool.info("Sleep", "s").progress == pytest.approx(1.0)
    assert stop(daemons[0]) == 0


def test_dead_daemon_tasks_are_rerun_by_another_after_its_heartbeat_stops(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=3600, maxrestart=3)
    spool.enqueue("Sleep", "s", 20)
    a = start_daemon(spool, "--workers", "1", "--server-id", "a", "--heartbeat", "0.2")
    daemons.append(a)
    wait_for(lambda: spool.counts()["RUNNING"] == 1, 30, "the task to run on a")
    wait_for(lambda: json.loads((spool.path / "daemons" / "a.json").read_text())["running"], 10, "a heartbeat")
    beat = json.loads((spool.path / "daemons" / "a.json").read_text())
    assert beat["server"] == "a" and beat["host"] and beat["workers"] == 1
    a.kill()
    a.wait(10)
    b = start_daemon(
        spool,
        "--workers",
        "1",
        "--server-id",
        "b",
        "--heartbeat",
        "0.2",
        "--dead-after",
        "1",
        "--sweep-interval",
        "0.5",
    )
    daemons.append(b)
    wait_for(
        lambda: any(r.server == "b" and r.state is State.RUNNING for r in spool.log("Sleep", "s")), 30, "b to take over"
    )
    log = spool.log("Sleep", "s")
    assert any("daemon a presumed dead" in r.message for r in log)
    assert stop(b) == 0


def test_a_daemon_whose_heartbeat_lapsed_claims_nothing_and_discards_what_ran_meanwhile(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    # the main process paused (as a partitioned host's would be, blocked on its mount): its worker runs on
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=60)
    spool.enqueue("Sleep", "s", 2)
    log = tmp_path / "a.log"
    a = start_daemon(spool, "--workers", "1", "--server-id", "a", "--heartbeat", "0.2", "--dead-after", "1", log=log)
    daemons.append(a)
    wait_for(lambda: spool.status("Sleep", "s") is State.RUNNING, 30, "the task to run")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        spool.enqueue("Sleep", "later", 0)
        time.sleep(4)  # the handler returned after 2 s; the lease (0.6 s of --dead-after) lapsed long before
        # its end was refused (another host may have run it again) and, as nobody had, it was given back
        assert spool.status("Sleep", "s") is State.ENQUEUED
        assert spool.status("Sleep", "later") is State.ENQUEUED  # and nothing new was claimed
    finally:
        os.kill(a.pid, signal.SIGCONT)
    wait_for(lambda: spool.counts()["FINISHED"] == 2, 30, "both tasks to finish once the daemon is back")
    history = spool.log("Sleep", "s")
    assert [r.state for r in history].count(State.FINISHED) == 1
    assert [r.attempt for r in history if r.state is State.FINISHED] == [2]
    assert any("lapsed" in r.message for r in history)
    assert stop(a) == 0
    assert "no heartbeat written for" in log.read_text()


def test_a_heartbeat_too_slow_for_the_lease_is_refused_with_both_numbers(tmp_path: Path) -> None:
    from spoolatp.daemon import Daemon

    with pytest.raises(ValueError, match=r"heartbeat \(30 s\) must be shorter than 0.4 x dead_after \(40 s\)"):
        Daemon(Spool(tmp_path / "spool"), heartbeat=30, dead_after=40)


def test_a_second_daemon_with_the_same_server_id_on_this_host_is_refused(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    # it would take the first one's tasks back as "left by an earlier run of this server"
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=60)
    spool.enqueue("Sleep", "s", 30)
    daemons.append(start_daemon(spool, "--workers", "1", "--server-id", "box"))
    wait_for(lambda: spool.status("Sleep", "s") is State.RUNNING, 30, "the task to run")
    second = subprocess.run(
        [sys.executable, "-m", "spoolatp", "daemon", "--spool", str(spool.path), "--server-id", "box"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another daemon with server id 'box' already serves" in second.stderr
    assert spool.status("Sleep", "s") is State.RUNNING and spool.info("Sleep", "s").attempts == 1


@pytest.mark.parametrize("skew", [30.0, -30.0])
def test_a_skewed_host_judges_time_by_the_spools_clock(tmp_path: Path, skew: float) -> None:
    spool = Spool(tmp_path / "spool")
    code = "import sys, time; from spoolatp import Spool; print(Spool(sys.argv[1]).clock() - time.time())"
    env = {**os.environ, "SPOOLATP_CLOCK_OFFSET": str(skew)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(spool.path)], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout)) < 1.5  # the injected skew is measured against file mtimes and cancelled
    assert "off the spool's" in out.stderr  # and the host is told its clock is off


def test_a_daemon_with_a_skewed_clock_does_not_steal_a_live_task(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Sleep", "testing.sleep", timeout=20)
    spool.enqueue("Sleep", "held", 1)
    [claim] = spool.claim("live")
    spool.start(claim)
    env = {**os.environ, "SPOOLATP_CLOCK_OFFSET": "30"}
    cmd = [sys.executable, "-m", "spoolatp", "--spool", str(spool.path), "daemon", "--workers", "1", "--burst"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode == 0
    assert spool.status("Sleep", "held") is State.RUNNING  # 30 s ahead, yet it waits out the 20 s timeout
    spool.finish(claim)
    assert spool.status("Sleep", "held") is State.FINISHED


def test_max_tasks_per_worker_recycles_workers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    marker = tmp_path / "ran.txt"
    spool.register_type("Mark", "testing.marker", timeout=60)
    for n in range(6):
        spool.enqueue("Mark", f"t{n}", {"path": str(marker)})
    proc = start_daemon(spool, "--workers", "1", "--max-tasks-per-worker", "2", "--burst")
    assert proc.wait(60) == 0
    assert spool.counts()["FINISHED"] == 6
    pids = Counter(line.split()[1] for line in marker.read_text().splitlines())
    assert len(pids) == 3 and set(pids.values()) == {2}  # one worker, replaced after every second task


def test_a_task_that_ended_is_not_killed_while_its_worker_claims_the_next(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    """A worker records a task's end in its slot before it claims the next; a slow claim is not a hung task."""
    spool = Spool(tmp_path / "spool")
    marker, log = tmp_path / "ran.txt", tmp_path / "daemon.log"
    spool.register_type("Mark", "testing.marker", timeout=0.5)
    spool.enqueue("Mark", "first", {"path": str(marker)}, priority=9)
    spool.enqueue("Mark", "second", {"path": str(marker)})
    # names that sort between the two tasks, each quarantined by the claim that meets it: the claim after
    # "first" takes several times its timeout
    for n in range(5000):
        (spool.path / "enqueued" / f"0~not-a-key-{n:05d}").touch()
    daemons.append(start_daemon(spool, "--workers", "1", log=log))
    wait_for(all_terminal(spool, 2), 120, "both tasks to end")
    assert [spool.status("Mark", t) for t in ("first", "second")] == [State.FINISHED, State.FINISHED]
    assert "killed" not in log.read_text()
    assert len({line.split()[1] for line in marker.read_text().splitlines()}) == 1  # one worker ran both
    for task in ("first", "second"):
        assert sum(1 for r in spool.log("Mark", task) if r.state is State.RUNNING) == 1
    assert stop(daemons[0]) == 0
