"""Real races between real processes on one spool.

The workers are module-level functions started with the ``spawn`` method, so
each is a fresh interpreter that shares nothing with the test but the spool
directory; they report through files they write into ``tmp_path``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from spoolatp import QueueEmpty, QueueFull, ResponseNotFound, Spool, State, TaskExists, TaskNotFound

pytestmark = pytest.mark.usefixtures("both_fs_modes")  # the local fast paths and the network paths

ctx = multiprocessing.get_context("spawn")
PROCS = 8


def start_all(target: Any, args_of: list[tuple[Any, ...]]) -> list[multiprocessing.process.BaseProcess]:
    procs = [ctx.Process(target=target, args=args) for args in args_of]
    for proc in procs:
        proc.start()
    return procs


def join_all(procs: list[multiprocessing.process.BaseProcess], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for proc in alive:
        proc.kill()
        proc.join()
    assert not alive, f"{len(alive)} workers did not finish in {timeout} s"
    assert [p.exitcode for p in procs] == [0] * len(procs)


# --------------------------------------------------------------------------- every task dequeued exactly once


def drain(spool_path: str, server: str, out: str, go: Any) -> None:
    spool = Spool(spool_path)
    claimed = []
    go.wait()
    while True:
        try:
            (claim,) = spool.claim(server)
        except QueueEmpty:
            break
        claimed.append(claim.key)
        spool.start(claim)
        spool.finish(claim, f"done by {server}")
    Path(out).write_text("\n".join(claimed))


@pytest.mark.timeout(180)
def test_eight_processes_dequeue_five_thousand_tasks_each_exactly_once(spool: Spool, tmp_path: Path) -> None:
    spool.register_type("T", "h")
    keys = {spool.enqueue("T", f"task{n:05d}", n) for n in range(5000)}
    go = ctx.Event()
    outs = [tmp_path / f"claims-{n}.txt" for n in range(PROCS)]
    procs = start_all(drain, [(str(spool.path), f"srv{n}", str(out), go) for n, out in enumerate(outs)])
    go.set()
    join_all(procs, timeout=150)

    per_proc = [[k for k in out.read_text().split("\n") if k] for out in outs]
    claims = Counter(k for keys_of in per_proc for k in keys_of)
    assert set(claims) == keys, "some task was never dequeued"
    assert [k for k, n in claims.items() if n > 1] == [], "some task was dequeued twice"
    assert sum(1 for keys_of in per_proc if keys_of) >= 2, "no race happened: one process took everything"
    assert spool.counts() == {"ENQUEUED": 0, "SCHEDULED": 0, "RUNNING": 0, "FINISHED": 5000, "FAILED": 0}
    sample = spool.info("T", "task00042")
    assert (sample.state, sample.attempts) == (State.FINISHED, 1)


def drain_shared(spool_path: str, out: str, go: Any, how: str) -> None:
    from spoolatp.workers import ClaimLock

    spool = Spool(spool_path)
    lock = ClaimLock(spool, "shared")
    claimed = []
    go.wait()
    while True:
        try:
            if how == "claim_and_start":
                claim, started = spool.claim_and_start("shared", serial=lock)
                assert started is not None and started.input == int(claim.task_id[4:])
            else:
                (claim,) = spool.claim("shared", serial=lock)
                spool.start(claim)
        except QueueEmpty:
            break
        claimed.append(claim.key)
        spool.finish(claim)
    Path(out).write_text("\n".join(claimed))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["claim", "claim_and_start"])
def test_processes_sharing_a_server_id_dequeue_each_task_exactly_once(spool: Spool, tmp_path: Path, how: str) -> None:
    # a daemon's workers claim into one scheduled/SERVER/ (running/SERVER/ when they start at once): their stale
    # listings keep offering tasks a sibling has just claimed, whose rename then fails with ENOENT while the
    # task sits in the shared directory
    spool.register_type("T", "h")
    keys = {spool.enqueue("T", f"task{n:04d}", n) for n in range(2000)}
    go = ctx.Event()
    outs = [tmp_path / f"claims-{n}.txt" for n in range(4)]
    procs = start_all(drain_shared, [(str(spool.path), str(out), go, how) for out in outs])
    go.set()
    join_all(procs, timeout=150)
    claims = Counter(k for out in outs for k in out.read_text().split("\n") if k)
    assert set(claims) == keys and [k for k, n in claims.items() if n > 1] == []
    assert spool.counts()["FINISHED"] == 2000


def test_a_stale_listing_does_not_claim_what_a_sibling_of_the_same_server_holds(spool: Spool) -> None:
    from spoolatp.workers import ClaimLock

    spool.register_type("T", "h")
    for n in range(3):
        spool.enqueue("T", f"t{n}", n)
    a, b = Spool(spool.path), Spool(spool.path)
    first = b.claim("shared", serial=ClaimLock(b, "shared"))[0]  # b's listing now offers t1 and t2
    taken = a.claim("shared", serial=ClaimLock(a, "shared"))[0]  # a takes t1 behind b's back
    second = b.claim("shared", serial=ClaimLock(b, "shared"))[0]
    assert (first.task_id, taken.task_id, second.task_id) == ("t0", "t1", "t2")
    with pytest.raises(QueueEmpty):
        b.claim("shared", serial=ClaimLock(b, "shared"))
    assert [r.attempt for r in spool.log("T", "t1") if r.state is State.SCHEDULED] == [1]


@pytest.mark.parametrize("taker", ["delete", "recover"])
def test_a_task_taken_away_while_its_claim_reads_it_gets_no_claim_record(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, taker: str
) -> None:
    """A delete or a reaper renames the directory away between the claim's rename and its append: no claim."""
    spool.register_type("T", "h")
    spool.enqueue("T", "t", 1)
    other = Spool(spool.path)
    read_record, taken = Spool._read_record, []

    def read_then_take(self: Spool, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("read") is not None and not taken:  # the claim's own read: the task is in running/srv
            taken.append(other.delete("T", "t") if taker == "delete" else other.recover("srv", "presumed dead"))
        return read_record(self, *args, **kwargs)

    monkeypatch.setattr(Spool, "_read_record", read_then_take)
    with pytest.raises(QueueEmpty):  # given up, as its append found the directory gone
        spool.claim_and_start("srv")
    assert taken
    monkeypatch.undo()
    if taker == "delete":
        with pytest.raises(TaskNotFound):
            spool.status("T", "t")
    else:  # back in the queue, with no line of the claim that lost it after its re-enqueue
        assert [r.state for r in spool.log("T", "t")] == [State.ENQUEUED, State.ENQUEUED]


def test_threads_noting_one_claim_at_once_lose_no_note_and_raise_nothing(spool: Spool) -> None:
    """The held-claim cache of one Spool object, read and written by several threads of one handler."""
    import sys
    import threading

    spool.register_type("T", "h")
    errors: list[str] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside the cache's updates, as often as possible
    try:
        for n in range(20):
            spool.enqueue("T", f"t{n}", n)
            claim, _ = spool.claim_and_start("srv")

            def note(i: int, claim: Any = claim) -> None:
                for step in range(15):
                    try:
                        spool.note(claim, f"thread {i} step {step}", progress=0.5)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=note, args=(i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            spool.finish(claim)
            assert sum(1 for r in spool.log("T", f"t{n}") if r.message.startswith("thread")) == 8 * 15
    finally:
        sys.setswitchinterval(old)
    assert errors == []


# --------------------------------------------------------------------------- one winner per (type, id)


def enqueue_same(spool_path: str, out: str, go: Any, rounds: int) -> None:
    spool = Spool(spool_path)
    results = []
    go.wait()
    for n in range(rounds):
        try:
            spool.enqueue("T", f"same{n}", os.getpid())
            results.append("won")
        except TaskExists:
            results.append("exists")
    Path(out).write_text(json.dumps(results))


def test_eight_processes_enqueueing_the_same_task_have_exactly_one_winner(spool: Spool, tmp_path: Path) -> None:
    rounds = 40
    spool.register_type("T", "h")
    go = ctx.Event()
    outs = [tmp_path / f"enq-{n}.json" for n in range(PROCS)]
    procs = start_all(enqueue_same, [(str(spool.path), str(out), go, rounds) for out in outs])
    go.set()
    join_all(procs)

    results = [json.loads(out.read_text()) for out in outs]
    for n in range(rounds):
        assert sorted(r[n] for r in results) == ["exists"] * (PROCS - 1) + ["won"], f"round {n}"
    assert spool.counts()["ENQUEUED"] == rounds
    assert len(os.listdir(spool.path / "ids")) == rounds
    assert os.listdir(spool.path / "tmp") == []


# --------------------------------------------------------------------------- the queue limit holds under load

CAP = 5


def produce(spool_path: str, n: int, out: str, go: Any) -> None:
    spool = Spool(spool_path)
    events = []
    go.wait()
    for i in range(50):
        before = time.monotonic_ns()
        try:
            key = spool.enqueue("T", f"p{n}-{i}", i)
        except QueueFull:
            events.append(["full", before, time.monotonic_ns(), None])
        else:
            events.append(["ok", before, time.monotonic_ns(), key])
    Path(out).write_text(json.dumps(events))


def consume(spool_path: str, server: str, out: str, go: Any, producers_done: Any) -> None:
    spool = Spool(spool_path)
    events = []
    go.wait()
    while True:
        before = time.monotonic_ns()
        try:
            claims = spool.claim(server)
        except QueueEmpty:
            if producers_done.is_set() and not os.listdir(os.path.join(spool_path, "enqueued")):
                break
            continue
        for claim in claims:
            events.append([claim.key, before, time.monotonic_ns()])
            spool.finish(claim)
    Path(out).write_text(json.dumps(events))


def watch(spool_path: str, out: str, go: Any, stop: Any) -> None:
    enqueued, slots = os.path.join(spool_path, "enqueued"), os.path.join(spool_path, "slots")
    most_enqueued = most_slots = samples = 0
    slot_names: set[str] = set()
    go.wait()
    while not stop.is_set():
        most_enqueued = max(most_enqueued, len([e for e in os.listdir(enqueued) if not e.startswith(".")]))
        names = os.listdir(slots)
        most_slots = max(most_slots, len(names))
        slot_names.update(names)
        samples += 1
    Path(out).write_text(json.dumps([most_enqueued, most_slots, samples, sorted(slot_names)]))


def test_eight_producers_never_push_the_queue_past_its_cap(spool: Spool, tmp_path: Path) -> None:
    spool.register_type("T", "h")
    spool.configure(max_queue=CAP)
    go, producers_done, stop = ctx.Event(), ctx.Event(), ctx.Event()
    p_outs = [tmp_path / f"prod-{n}.json" for n in range(PROCS)]
    c_outs = [tmp_path / f"cons-{n}.json" for n in range(2)]
    w_out = tmp_path / "watch.json"
    watcher = start_all(watch, [(str(spool.path), str(w_out), go, stop)])
    consumers = start_all(
        consume, [(str(spool.path), f"c{n}", str(out), go, producers_done) for n, out in enumerate(c_outs)]
    )
    producers = start_all(produce, [(str(spool.path), n, str(out), go) for n, out in enumerate(p_outs)])
    go.set()
    join_all(producers)
    producers_done.set()
    join_all(consumers)
    stop.set()
    join_all(watcher)

    most_enqueued, most_slots, samples, slot_names = json.loads(w_out.read_text())
    assert samples > 10, "the watcher hardly looked"
    assert most_enqueued <= CAP, f"the watcher saw {most_enqueued} tasks ENQUEUED"
    assert most_slots <= CAP, f"the watcher saw {most_slots} slots taken"
    assert set(slot_names) <= {str(n) for n in range(CAP)}

    produced = [e for out in p_outs for e in json.loads(out.read_text())]
    dequeued = {key: (before, after) for out in c_outs for key, before, after in json.loads(out.read_text())}
    oks = {e[3]: (e[1], e[2]) for e in produced if e[0] == "ok"}
    assert any(e[0] == "full" for e in produced), "the cap was never reached: the test proved nothing"
    assert len(oks) > CAP, f"only {len(oks)} enqueues succeeded"
    assert set(dequeued) == set(oks), (
        f"accepted but never dequeued: {sorted(set(oks) - set(dequeued))[:5]}; "
        f"dequeued but never accepted: {sorted(set(dequeued) - set(oks))[:5]}; "
        f"quarantine: {os.listdir(spool.path / 'quarantine')}"
    )
    # A task is surely ENQUEUED from the moment its enqueue returned until its claim began.
    # Count those at every instant: accepted minus dequeued never exceeds the cap.
    steps = []
    for key, (_, enq_done) in oks.items():
        claim_began = dequeued[key][0]
        if enq_done < claim_began:
            steps += [(enq_done, 1), (claim_began, -1)]
    level = peak = 0
    for _, step in sorted(steps, key=lambda s: (s[0], s[1])):
        level += step
        peak = max(peak, level)
    assert peak <= CAP, f"{peak} tasks were surely ENQUEUED at once"
    assert spool.counts()["FINISHED"] == len(oks)
    assert os.listdir(spool.path / "slots") == []


# --------------------------------------------------------------------------- readers of a moving task


def run_quickly(spool_path: str, go: Any, count: int) -> None:
    spool = Spool(spool_path)
    go.wait()
    done = 0
    while done < count:
        try:
            claims = spool.claim("mover", limit=10)
        except QueueEmpty:
            continue
        for claim in claims:
            spool.start(claim)
            spool.store_response(claim, f"response of {claim.task_id}")
            spool.note(claim, "working")
            spool.finish(claim)
            done += 1


def test_status_log_and_response_of_a_moving_task_never_fail_or_go_back(spool: Spool) -> None:
    count = 300
    spool.register_type("T", "h")
    for n in range(count):
        spool.enqueue("T", f"t{n}", n)
    go = ctx.Event()
    procs = start_all(run_quickly, [(str(spool.path), go, count)])
    go.set()
    order = list(State)
    try:
        for n in range(count):
            last_state, last_len, had_response = 0, 0, False
            while True:
                state = spool.status("T", f"t{n}")
                log = spool.log("T", f"t{n}")
                try:
                    assert spool.response("T", f"t{n}") == (f"response of t{n}", "text/xml")
                    had_response = True
                except ResponseNotFound:
                    assert not had_response, "a stored response went missing"
                assert order.index(state) >= last_state, "a status went backwards"
                assert len(log) >= last_len, "the log lost records"
                assert log[0].state is State.ENQUEUED
                last_state, last_len = order.index(state), len(log)
                if state is State.FINISHED:
                    assert [r.state for r in log] == [
                        State.ENQUEUED,
                        State.SCHEDULED,
                        State.RUNNING,
                        None,
                        State.FINISHED,
                    ]
                    break
    except TaskNotFound:
        raise AssertionError("an existing task was reported as not found") from None
    finally:
        join_all(procs)


# --------------------------------------------------------------------------- deleting tasks while they run


def run_and_count_losses(spool_path: str, go: Any, out: str) -> None:
    from spoolatp import ClaimLost

    spool = Spool(spool_path)
    go.set()
    finished = lost = 0
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 1.0:
        try:
            claims = spool.claim("busy")
        except QueueEmpty:
            continue
        idle_since = time.monotonic()
        for claim in claims:
            try:
                spool.start(claim)
                spool.note(claim, "working")
                spool.store_response(claim, "result")
                spool.finish(claim)
                finished += 1
            except ClaimLost:
                lost += 1
    Path(out).write_text(json.dumps([finished, lost]))


def test_deleting_tasks_while_a_consumer_runs_them_fails_neither_side(spool: Spool, tmp_path: Path) -> None:
    """The producer's delete always finds the task; the consumer sees only ClaimLost."""
    count = 400
    spool.register_type("T", "h")
    for n in range(count):
        spool.enqueue("T", f"t{n}", n)
    running, out = ctx.Event(), tmp_path / "consumer.json"
    procs = start_all(run_and_count_losses, [(str(spool.path), running, str(out))])
    running.wait(30)
    deleted: set[str] = set()
    try:
        # first the tasks the consumer holds (listed as SCHEDULED or RUNNING), while it runs; then the rest
        while procs[0].is_alive() and len(deleted) < count:
            for info in [*spool.tasks(State.SCHEDULED), *spool.tasks(State.RUNNING)]:
                if info.task_id not in deleted:  # a task that moved on between the two listings is in both
                    spool.delete(info.type_id, info.task_id)
                    deleted.add(info.task_id)
        for n in range(count):
            if f"t{n}" not in deleted:
                spool.delete("T", f"t{n}")
    finally:
        join_all(procs)
    finished, lost = json.loads(out.read_text())
    assert lost > 0, "the consumer never lost a task: no race happened"
    assert finished + lost <= count
    assert list(spool.tasks()) == []
    assert os.listdir(spool.path / "ids") == []
    assert [(n, os.listdir(spool.path / "tmp" / n)) for n in os.listdir(spool.path / "tmp")] == []
    assert os.listdir(spool.path / "quarantine") == []
