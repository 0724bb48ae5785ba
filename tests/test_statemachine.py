"""A Hypothesis state machine over the spool: every task is in exactly one state, and nothing is lost.

The model maps ``(type, id)`` to what the task should be; after every step the
spool is checked three ways: through :meth:`Spool.status`, through
:meth:`Spool.tasks`, and by walking the state directories by hand.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_spool import raw_states

from spoolatp import Claim, ClaimLost, QueueEmpty, QueueFull, Spool, State, TaskExists, TaskNotFound, fsio
from spoolatp.format import encode_name

CAP = 4
MAXRESTART = 1
TYPES = ["A", "Z"]  # A: abandoned only by hand, kept forever; Z: times out and retires at once
IDS = ["t1", "t2", "t3", "Tâche 1", ".dot", "a~b%"]
SERVERS = ["s1", "s2"]


@dataclasses.dataclass
class Task:
    key: str
    state: State
    claim: Claim | None = None
    restarts: int = 0
    slot: bool = True  # holds one of the max_queue slots (only from enqueue until its first claim)


class SpoolMachine(RuleBasedStateMachine):
    #: take a network file system's careful paths (fsio.network_fs), not a local one's fast paths
    network = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="spoolatp-sm-")
        old = os.environ.get(fsio.NETWORK_FS_ENV)
        os.environ[fsio.NETWORK_FS_ENV] = "1" if self.network else "0"
        try:
            self.spool = Spool(Path(self.dir) / "spool")
        finally:
            if old is None:
                del os.environ[fsio.NETWORK_FS_ENV]
            else:
                os.environ[fsio.NETWORK_FS_ENV] = old
        self.spool.configure(max_queue=CAP)
        self.spool.register_type("A", "h", timeout=3600, timeret=-1, maxrestart=MAXRESTART)
        self.spool.register_type("Z", "h", timeout=1e-9, timeret=1e-9, maxrestart=MAXRESTART)
        self.model: dict[tuple[str, str], Task] = {}
        self.stale: list[Claim] = []

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def held(self) -> list[tuple[str, str]]:
        return sorted(k for k, t in self.model.items() if t.claim is not None)

    def lose(self, task: Task) -> None:
        if task.claim is not None:
            self.stale.append(task.claim)
            task.claim = None

    def taken_back(self, task: Task, count: bool) -> State:
        """What re-enqueue or abandonment does to a held task in the model."""
        self.lose(task)
        if count and task.restarts >= MAXRESTART:
            task.state = State.FAILED
        else:
            task.restarts += int(count)
            task.state = State.ENQUEUED
        return task.state

    # ------------------------------------------------------------------ producer

    @rule(type_id=st.sampled_from(TYPES), task_id=st.sampled_from(IDS))
    def enqueue(self, type_id: str, task_id: str) -> None:
        if (type_id, task_id) in self.model:
            with pytest.raises(TaskExists):
                self.spool.enqueue(type_id, task_id, task_id)
        elif sum(t.slot for t in self.model.values()) >= CAP:
            with pytest.raises(QueueFull):
                self.spool.enqueue(type_id, task_id, task_id)
        else:
            key = self.spool.enqueue(type_id, task_id, task_id)
            self.model[type_id, task_id] = Task(key, State.ENQUEUED)

    @rule(type_id=st.sampled_from(TYPES), task_id=st.sampled_from(IDS))
    def delete(self, type_id: str, task_id: str) -> None:
        task = self.model.pop((type_id, task_id), None)
        if task is None:
            with pytest.raises(TaskNotFound):
                self.spool.delete(type_id, task_id)
            return
        self.spool.delete(type_id, task_id)
        self.lose(task)

    # ------------------------------------------------------------------ consumer

    @rule(server=st.sampled_from(SERVERS))
    def claim(self, server: str) -> None:
        waiting = [(t.key, k) for k, t in self.model.items() if t.state is State.ENQUEUED]
        if not waiting:
            with pytest.raises(QueueEmpty):
                self.spool.claim(server)
            return
        (claim,) = self.spool.claim(server)
        _, expected = min(waiting)  # oldest first, re-enqueued tasks in their old place
        assert (claim.type_id, claim.task_id) == expected
        task = self.model[expected]
        task.state, task.claim, task.slot = State.SCHEDULED, claim, False

    @precondition(lambda self: any(t.state is State.SCHEDULED for t in self.model.values()))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        k = data.draw(st.sampled_from(sorted(k for k, t in self.model.items() if t.state is State.SCHEDULED)))
        task = self.model[k]
        assert task.claim is not None
        started = self.spool.start(task.claim)
        assert (started.type_id, started.task_id, started.input) == (*k, k[1])
        task.state = State.RUNNING

    @precondition(lambda self: self.held())
    @rule(data=st.data(), end=st.sampled_from([State.FINISHED, State.FAILED]))
    def end(self, data: st.DataObject, end: State) -> None:
        task = self.model[data.draw(st.sampled_from(self.held()))]
        assert task.claim is not None
        (self.spool.finish if end is State.FINISHED else self.spool.fail)(task.claim, "the end")
        task.state, task.claim = end, None

    @precondition(lambda self: self.stale)
    @rule(data=st.data(), what=st.sampled_from(["finish", "fail", "note", "start", "store_response"]))
    def late_write_of_a_lost_claim(self, data: st.DataObject, what: str) -> None:
        claim = data.draw(st.sampled_from(self.stale))
        args = ("late",) if what in ("note", "store_response") else ()
        with pytest.raises(ClaimLost):
            getattr(self.spool, what)(claim, *args)

    # ------------------------------------------------------------------ maintenance

    @precondition(lambda self: self.held())
    @rule(data=st.data(), count=st.booleans())
    def abandon(self, data: st.DataObject, count: bool) -> None:
        task = self.model[data.draw(st.sampled_from(self.held()))]
        claim = task.claim
        assert claim is not None
        assert self.spool.abandon(claim, "abandoned by the test", count=count) is self.taken_back(task, count)

    @rule()
    def reenqueue_zombies(self) -> None:
        expected = []
        for k in self.held():
            if k[0] == "Z":  # A tasks never time out here
                expected.append((*k, self.taken_back(self.model[k], count=True)))
        assert sorted(self.spool.reenqueue_zombies()) == sorted(expected)

    @rule()
    def retire(self) -> None:
        expected = sorted(k for k, t in self.model.items() if k[0] == "Z" and t.state.terminal)
        assert sorted(self.spool.delete_retired()) == expected
        for k in expected:
            del self.model[k]

    @precondition(lambda self: self.held())
    @rule(data=st.data())
    def reaper_crashes_and_sweep_tmp_recovers(self, data: st.DataObject) -> None:
        task = self.model[data.draw(st.sampled_from(self.held()))]
        claim = task.claim
        assert claim is not None
        where = "running" if task.state is State.RUNNING else "scheduled"
        grave = f"reap~crashed~{task.key}"
        os.rename(self.spool.path / where / claim.server / task.key, self.spool.path / "tmp" / grave)
        assert self.spool.sweep_tmp(grace=0) == [grave]
        self.taken_back(task, count=False)

    # ------------------------------------------------------------------ the invariant

    @invariant()
    def every_task_is_in_exactly_one_state_and_nothing_is_lost(self) -> None:
        root = self.spool.path
        expected_dirs = {}
        for (type_id, task_id), task in self.model.items():
            where = task.state.name.lower()
            if task.claim is not None:
                where += f"/{task.claim.server}"
            expected_dirs[task.key] = [where]
            assert self.spool.status(type_id, task_id) is task.state
        assert raw_states(root) == expected_dirs
        links = {name: os.readlink(root / "ids" / name) for name in os.listdir(root / "ids")}
        assert links == {f"{encode_name(t)}~{encode_name(i)}": task.key for (t, i), task in self.model.items()}
        listed = {(i.type_id, i.task_id): (i.state, i.key) for i in self.spool.tasks()}
        assert listed == {k: (t.state, t.key) for k, t in self.model.items()}
        slots = {os.readlink(root / "slots" / n) for n in os.listdir(root / "slots")}
        assert slots == {t.key for t in self.model.values() if t.slot}
        assert os.listdir(root / "tmp") == []
        assert os.listdir(root / "quarantine") == []


SpoolMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSpoolStateMachine = SpoolMachine.TestCase


class NetworkSpoolMachine(SpoolMachine):
    network = True


NetworkSpoolMachine.TestCase.settings = SpoolMachine.TestCase.settings
TestNetworkSpoolStateMachine = NetworkSpoolMachine.TestCase
