"""The spool on disk: states, identifiers, fencing, validation, limits and crash recovery.

Every test works on real files in ``tmp_path``; nothing of the file system is mocked.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolatp import (
    ClaimLost,
    CorruptTaskFile,
    QueueEmpty,
    QueueFull,
    ResponseNotFound,
    Spool,
    State,
    TaskExists,
    TaskNotFound,
    UnknownTaskType,
    fsio,
)
from spoolatp import spool as spoolmod
from spoolatp.format import (
    STATE_DIRS,
    TASK_MAGIC,
    decode_name,
    encode_name,
    journal_offset,
    make_key,
    parse_key,
    seal,
    validate_id,
)

pytestmark = pytest.mark.usefixtures("both_fs_modes")  # the local fast paths and the network paths

SERVER = "atpd-test"
TICK = 0.02  # longer than the tiny timeouts and retentions registered below


@pytest.fixture
def T(spool: Spool) -> str:
    """A registered task type that never times out during a test."""
    spool.register_type("T", "sequence_sum", timeout=3600, timeret=-1, maxrestart=2)
    return "T"


@pytest.fixture
def Z(spool: Spool) -> str:
    """A registered task type whose holders time out at once (timeout 1 ms)."""
    spool.register_type("Z", "sequence_sum", timeout=0.001, timeret=-1, maxrestart=2)
    return "Z"


def to_state(spool: Spool, type_id: str, task_id: str, state: State) -> object:
    """Enqueue a task and drive it to ``state``; return its claim (None while ENQUEUED)."""
    spool.enqueue(type_id, task_id, (1, 2, 3))
    if state is State.ENQUEUED:
        return None
    (claim,) = spool.claim(SERVER)
    assert (claim.type_id, claim.task_id) == (type_id, task_id), "to_state needs an otherwise empty queue"
    if state is State.SCHEDULED:
        return claim
    spool.start(claim)
    if state is State.FINISHED:
        spool.finish(claim, "done")
    elif state is State.FAILED:
        spool.fail(claim, "broken")
    return claim


def listing(root: Path) -> list[str]:
    """Every path under ``root`` (files, directories, symlinks), relative and sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def raw_states(root: Path) -> dict[str, list[str]]:
    """Walk the state directories by hand: ``{key: [state dir, ...]}`` without using spoolatp."""
    found: dict[str, list[str]] = {}
    for state in STATE_DIRS:
        base = root / state
        if state in ("scheduled", "running"):
            entries = [(f"{state}/{srv}", key) for srv in os.listdir(base) for key in os.listdir(base / srv)]
        else:
            entries = [(state, key) for key in os.listdir(base)]
        for where, key in entries:
            found.setdefault(key, []).append(where)
    return found


def where(spool: Spool, key: str) -> list[str]:
    return raw_states(spool.path).get(key, [])


# --------------------------------------------------------------------------- states and transitions


def test_state_codes_and_names_are_eoxservers() -> None:
    assert [(s.value, s.name) for s in State] == [
        (1, "ENQUEUED"),
        (2, "SCHEDULED"),
        (3, "RUNNING"),
        (5, "FINISHED"),
        (6, "FAILED"),
    ]
    assert State.FINISHED.pair() == (5, "FINISHED")
    assert [s for s in State if s.terminal] == [State.FINISHED, State.FAILED]


@pytest.mark.parametrize(
    ("value", "state"),
    [("ACCEPTED", State.ENQUEUED), ("accepted", State.ENQUEUED), (" running ", State.RUNNING), (5, State.FINISHED)],
)
def test_state_parse_accepts_names_codes_and_the_ACCEPTED_alias(value: object, state: State) -> None:
    assert State.parse(value) is state  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [4, 0, "STARTED", "", "PAUSED"])
def test_state_parse_refuses_unknown_states_with_ValueError(value: object) -> None:
    with pytest.raises(ValueError):
        State.parse(value)  # type: ignore[arg-type]


def test_enqueue_publishes_an_ENQUEUED_task_directory_and_an_id_link(spool: Spool, T: str) -> None:
    key = spool.enqueue(T, "Task001", (1, 2, 3, 4, 5))
    assert spool.status(T, "Task001") is State.ENQUEUED
    assert where(spool, key) == ["enqueued"]
    assert os.readlink(spool.path / "ids" / "T~Task001") == key
    assert sorted(os.listdir(spool.path / "enqueued" / key)) == ["task"]
    assert os.listdir(spool.path / "tmp") == []


def test_claim_moves_the_task_to_SCHEDULED_under_its_server(spool: Spool, T: str) -> None:
    key = spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    assert (claim.key, claim.server, claim.attempt) == (key, SERVER, 1)
    assert (claim.type_id, claim.task_id) == (T, "Task001")
    assert spool.status(T, "Task001") is State.SCHEDULED
    assert where(spool, key) == [f"scheduled/{SERVER}"]


def test_start_moves_it_to_RUNNING_and_returns_type_id_handler_and_input(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", {"values": (1, 2, 3)})
    (claim,) = spool.claim(SERVER)
    started = spool.start(claim)
    assert tuple(started) == (T, "Task001", "sequence_sum", {"values": (1, 2, 3)})
    assert spool.status(T, "Task001") is State.RUNNING
    assert where(spool, claim.key) == [f"running/{SERVER}"]


def test_claim_and_start_moves_the_task_straight_to_RUNNING_with_both_records(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", {"values": (1, 2)})
    spool.enqueue(T, "Task002", None)
    claim, started = spool.claim_and_start(SERVER)
    assert tuple(started) == (T, "Task001", "sequence_sum", {"values": (1, 2)})  # type: ignore[arg-type]
    assert claim.attempt == 1
    assert where(spool, claim.key) == [f"running/{SERVER}"]
    assert os.listdir(spool.path / "scheduled") == []  # never there, not even an empty server directory
    data = (spool.path / "running" / SERVER / claim.key / "task").read_bytes()
    journal = data[journal_offset(data) :].splitlines()  # format 2: the journal follows the record
    assert [json.loads(line)["s"] for line in journal] == [2, 3]  # one append, two records
    spool.note(claim, "half way", progress=0.5)
    spool.finish(claim, "all done")
    log = spool.log(T, "Task001")
    assert [(r.state, r.message, r.attempt) for r in log[1:]] == [
        (State.SCHEDULED, f"scheduled on {SERVER}", 1),
        (State.RUNNING, "started", 1),
        (None, "half way", 1),
        (State.FINISHED, "all done", 1),
    ]
    assert spool.status(T, "Task002") is State.ENQUEUED


def test_claim_and_start_of_an_unregistered_type_returns_no_start_and_start_says_why(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    os.unlink(spool.path / "types" / "T.json")
    spool = Spool(spool.path)  # a consumer that never saw the type (the first handle has it cached)
    claim, started = spool.claim_and_start(SERVER)
    assert started is None
    assert spool.status(T, "Task001") is State.RUNNING  # held: its consumer fails it with the reason
    with pytest.raises(UnknownTaskType, match="T"):
        spool.start(claim)
    spool.fail(claim, "no such type")
    assert spool.status(T, "Task001") is State.FAILED


def test_a_task_claimed_and_started_again_after_a_reenqueue_counts_its_second_attempt(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    first, _ = spool.claim_and_start(SERVER)
    assert spool.abandon(first, "host lost") is State.ENQUEUED
    second, started = spool.claim_and_start(SERVER)
    assert (second.key, second.attempt, started is not None) == (first.key, 2, True)
    with pytest.raises(ClaimLost):
        spool.finish(first)
    spool.finish(second)
    assert spool.info(T, "Task001").attempts == 2


@pytest.mark.parametrize(("end", "state"), [("finish", State.FINISHED), ("fail", State.FAILED)])
def test_finish_and_fail_move_a_running_task_to_its_terminal_state(
    spool: Spool, T: str, end: str, state: State
) -> None:
    spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    getattr(spool, end)(claim, "the end")
    assert spool.status(T, "Task001") is state
    assert where(spool, claim.key) == [state.name.lower()]
    assert spool.ended(claim) is state
    assert spool.log(T, "Task001")[-1].message == "the end"


def test_a_scheduled_task_may_end_without_being_started(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    spool.fail(claim, "refused")
    assert spool.status(T, "Task001") is State.FAILED


def test_a_second_terminal_state_is_refused_with_ClaimLost(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.FINISHED)
    with pytest.raises(ClaimLost):
        spool.fail(claim, "too late")  # type: ignore[arg-type]
    assert spool.status(T, "Task001") is State.FINISHED


def test_finish_if_not_done_changes_nothing_after_the_attempt_ended(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.FAILED)
    assert spool.finish_if_not_done(claim) is False  # type: ignore[arg-type]
    assert spool.status(T, "Task001") is State.FAILED
    claim2 = to_state(spool, T, "Task002", State.RUNNING)
    assert spool.finish_if_not_done(claim2) is True  # type: ignore[arg-type]
    assert spool.status(T, "Task002") is State.FINISHED


def test_log_has_one_record_per_state_change_plus_notes_oldest_first(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None, message="submitted by test")
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    spool.note(claim, "half way", progress=0.5)
    spool.note(claim, "plain note")
    spool.finish(claim, "all done")
    log = spool.log(T, "Task001")
    assert [(r.state, r.message) for r in log] == [
        (State.ENQUEUED, "submitted by test"),
        (State.SCHEDULED, f"scheduled on {SERVER}"),
        (State.RUNNING, "started"),
        (None, "half way"),
        (None, "plain note"),
        (State.FINISHED, "all done"),
    ]
    assert [r.time for r in log] == sorted(r.time for r in log)
    assert log[3].progress == 0.5
    assert spool.info(T, "Task001").progress == 0.5


def test_response_round_trips_text_and_bytes_with_their_mime_type(spool: Spool, T: str) -> None:
    for task_id, body, mime in [("text", "15.0 ✓", "text/plain"), ("bin", b"\x00\xff" * 100, "image/png")]:
        spool.enqueue(T, task_id, None)
        (claim,) = spool.claim(SERVER)
        spool.start(claim)
        spool.store_response(claim, body, mime)
        spool.finish(claim)
        assert spool.response(T, task_id) == (body, mime)


def test_response_of_a_task_without_one_raises_ResponseNotFound(spool: Spool, T: str) -> None:
    to_state(spool, T, "Task001", State.FINISHED)
    with pytest.raises(ResponseNotFound):
        spool.response(T, "Task001")


def test_a_damaged_response_file_raises_CorruptTaskFile(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.RUNNING)
    spool.store_response(claim, "good", "text/plain")  # type: ignore[arg-type]
    spool.finish(claim)  # type: ignore[arg-type]
    path = spool.path / "finished" / claim.key / "response"  # type: ignore[attr-defined]
    path.write_bytes(path.read_bytes().replace(b"good", b"evil"))
    with pytest.raises(CorruptTaskFile, match="checksum"):
        spool.response(T, "Task001")


# --------------------------------------------------------------------------- delete and lookup errors


@pytest.mark.parametrize("state", list(State))
def test_delete_removes_a_task_in_every_state_and_frees_its_id(spool: Spool, T: str, state: State) -> None:
    claim = to_state(spool, T, "Task001", state)
    key = spool._key_of(T, "Task001")
    (spool.files_dir(T, "Task001")).mkdir()
    spool.delete(T, "Task001")
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task001")
    assert key not in raw_states(spool.path)
    assert os.listdir(spool.path / "ids") == []
    assert os.listdir(spool.path / "tmp") == []
    assert os.listdir(spool.path / "files") == []
    if claim is not None and not state.terminal:
        with pytest.raises(ClaimLost):
            spool.finish(claim)  # type: ignore[arg-type]
    spool.enqueue(T, "Task001", "again")
    assert spool.status(T, "Task001") is State.ENQUEUED


@pytest.mark.parametrize("call", ["status", "info", "log", "response", "delete", "files_dir"])
def test_an_unknown_task_raises_TaskNotFound_never_a_status(spool: Spool, T: str, call: str) -> None:
    spool.enqueue(T, "other", None)
    if call == "files_dir":  # a path, not a lookup: it must not invent the task either
        assert not spool.files_dir(T, "nope").exists()
        return
    with pytest.raises(TaskNotFound, match="nope"):
        getattr(spool, call)(T, "nope")


def test_an_unknown_type_raises_UnknownTaskType_and_writes_nothing(spool: Spool) -> None:
    before = listing(spool.path)
    with pytest.raises(UnknownTaskType, match="NoSuchType"):
        spool.enqueue("NoSuchType", "Task001", None)
    assert listing(spool.path) == before


def test_a_duplicate_type_and_id_raises_TaskExists_and_keeps_the_first(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", "first")
    before = listing(spool.path)
    with pytest.raises(TaskExists, match="already exists"):
        spool.enqueue(T, "Task001", "second")
    assert listing(spool.path) == before
    (claim,) = spool.claim(SERVER)
    assert spool.start(claim).input == "first"


@pytest.mark.parametrize("state", [State.RUNNING, State.FINISHED])
def test_an_id_stays_taken_until_the_task_is_deleted(spool: Spool, T: str, state: State) -> None:
    to_state(spool, T, "Task001", state)
    with pytest.raises(TaskExists):
        spool.enqueue(T, "Task001", None)


def test_the_same_id_under_two_types_is_two_tasks(spool: Spool, T: str) -> None:
    spool.register_type("U", "other")
    spool.enqueue(T, "Task001", "t")
    spool.enqueue("U", "Task001", "u")
    (claim,) = spool.claim(SERVER)
    assert claim.type_id == T
    spool.start(claim)
    spool.finish(claim)
    assert spool.status(T, "Task001") is State.FINISHED
    assert spool.status("U", "Task001") is State.ENQUEUED
    spool.delete("U", "Task001")
    assert spool.status(T, "Task001") is State.FINISHED


def test_claim_of_an_empty_queue_raises_QueueEmpty(spool: Spool, T: str) -> None:
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)
    to_state(spool, T, "Task001", State.SCHEDULED)
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)


def test_claim_takes_tasks_oldest_first_and_only_types_it_accepts(spool: Spool, T: str) -> None:
    spool.register_type("U", "other")
    for n in range(3):
        spool.enqueue(T, f"t{n}", n)
        spool.enqueue("U", f"u{n}", n)
    got = [c.task_id for c in spool.claim(SERVER, accept=lambda t: t == "U", limit=10)]
    assert got == ["u0", "u1", "u2"]
    assert [c.task_id for c in spool.claim("other-server", limit=2)] == ["t0", "t1"]


# --------------------------------------------------------------------------- fencing and zombies


def reap(spool: Spool) -> list[tuple[str, str, State]]:
    time.sleep(TICK)
    return spool.reenqueue_zombies()


@pytest.mark.parametrize(
    "late",
    ["finish", "fail", "finish_if_not_done", "store_response", "note", "start"],
)
def test_a_consumer_whose_task_was_reenqueued_gets_ClaimLost_and_changes_nothing(
    spool: Spool, Z: str, late: str
) -> None:
    spool.enqueue(Z, "Task001", None)
    (claim,) = spool.claim(SERVER)
    if late != "start":
        spool.start(claim)
    assert reap(spool) == [(Z, "Task001", State.ENQUEUED)]
    key = claim.key
    before = {p: (spool.path / "enqueued" / key / p).read_bytes() for p in os.listdir(spool.path / "enqueued" / key)}
    args = {"store_response": ("late",), "note": ("late",)}.get(late, ())
    with pytest.raises(ClaimLost):
        getattr(spool, late)(claim, *args)
    assert spool.status(Z, "Task001") is State.ENQUEUED
    after = {p: (spool.path / "enqueued" / key / p).read_bytes() for p in os.listdir(spool.path / "enqueued" / key)}
    assert after == before


def test_a_stale_attempt_cannot_end_the_task_after_its_server_claimed_it_again(spool: Spool, Z: str) -> None:
    """One daemon (one server id) re-claims a task a hung worker of its own had lost."""
    spool.enqueue(Z, "Task001", None)
    (old,) = spool.claim(SERVER)
    spool.start(old)
    reap(spool)
    (new,) = spool.claim(SERVER)
    assert (new.key, new.attempt) == (old.key, 2)
    spool.start(new)
    for late in ("finish", "fail", "note", "store_response"):
        with pytest.raises(ClaimLost):
            getattr(spool, late)(old, *(("late",) if late in ("note", "store_response") else ()))
    assert spool.status(Z, "Task001") is State.RUNNING
    assert spool.abandon(old, "stale") is None
    assert spool.status(Z, "Task001") is State.RUNNING
    spool.store_response(new, "fresh")
    spool.finish(new, "attempt 2 done")
    assert spool.status(Z, "Task001") is State.FINISHED
    assert spool.response(Z, "Task001") == ("fresh", "text/xml")


def test_a_consumer_whose_task_was_deleted_gets_ClaimLost(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.RUNNING)
    spool.delete(T, "Task001")
    spool.enqueue(T, "Task001", "new")  # the id is reused by a new task with a new key
    with pytest.raises(ClaimLost):
        spool.finish(claim)  # type: ignore[arg-type]
    assert spool.status(T, "Task001") is State.ENQUEUED


def test_a_task_is_not_reenqueued_before_its_timeout(spool: Spool, T: str) -> None:
    to_state(spool, T, "Task001", State.RUNNING)
    assert spool.reenqueue_zombies() == []
    assert spool.status(T, "Task001") is State.RUNNING


def test_maxrestart_is_enforced_the_next_abandonment_fails_the_task(spool: Spool) -> None:
    spool.register_type("Z", "h", timeout=0.001, maxrestart=3)
    spool.enqueue("Z", "Task001", None)
    for restart in (1, 2, 3):
        (claim,) = spool.claim(SERVER)
        assert claim.attempt == restart
        spool.start(claim)
        assert reap(spool) == [("Z", "Task001", State.ENQUEUED)]
        assert spool.info("Z", "Task001").restarts == restart
        assert f"restart {restart} of 3" in spool.log("Z", "Task001")[-1].message
    (claim,) = spool.claim(SERVER)
    assert reap(spool) == [("Z", "Task001", State.FAILED)]
    assert spool.status("Z", "Task001") is State.FAILED
    last = spool.log("Z", "Task001")[-1]
    assert last.state is State.FAILED
    assert "restart limit of 3 used up" in last.message


def test_maxrestart_zero_fails_a_task_on_its_first_abandonment(spool: Spool) -> None:
    spool.register_type("Z", "h", timeout=0.001, maxrestart=0)
    spool.enqueue("Z", "Task001", None)
    spool.claim(SERVER)
    assert reap(spool) == [("Z", "Task001", State.FAILED)]


def test_abandon_without_counting_does_not_use_up_restarts(spool: Spool) -> None:
    spool.register_type("T", "h", maxrestart=0)
    spool.enqueue("T", "Task001", None)
    for _ in range(3):
        (claim,) = spool.claim(SERVER)
        assert spool.abandon(claim, "clean shutdown", count=False) is State.ENQUEUED
    (claim,) = spool.claim(SERVER)
    assert spool.abandon(claim, "crash") is State.FAILED


def test_recover_takes_back_every_task_an_earlier_run_of_a_server_held(spool: Spool, T: str) -> None:
    for n in range(3):
        spool.enqueue(T, f"t{n}", None)
    a, b = spool.claim(SERVER, limit=2)
    spool.start(a)
    (other,) = spool.claim("someone-else")
    assert sorted(spool.recover(SERVER)) == [(T, "t0", State.ENQUEUED), (T, "t1", State.ENQUEUED)]
    assert spool.status(T, "t2") is State.SCHEDULED
    assert other.task_id == "t2"


def test_recover_quarantines_junk_in_the_servers_directories(spool: Spool, T: str) -> None:
    to_state(spool, T, "Task001", State.SCHEDULED)
    (spool.path / "scheduled" / SERVER / "junk").mkdir()
    assert spool.recover(SERVER) == [(T, "Task001", State.ENQUEUED)]
    assert os.listdir(spool.path / "scheduled" / SERVER) == []
    assert os.listdir(spool.path / "tmp") == []
    assert any(p.startswith("junk") for p in os.listdir(spool.path / "quarantine"))


def test_a_reenqueued_task_keeps_its_place_before_newer_tasks(spool: Spool, Z: str) -> None:
    for n in range(3):
        spool.enqueue(Z, f"t{n}", None)
    (first,) = spool.claim(SERVER)
    assert first.task_id == "t0"
    reap(spool)
    spool.enqueue(Z, "t3", None)
    got = [c.task_id for c in spool.claim(SERVER, limit=4)]
    assert got == ["t0", "t1", "t2", "t3"]


def test_a_task_reenqueued_by_another_process_keeps_its_place(spool: Spool, Z: str) -> None:
    for n in range(3):
        spool.enqueue(Z, f"t{n}", None)
    (first,) = spool.claim(SERVER)
    time.sleep(TICK)
    Spool(spool.path).reenqueue_zombies()  # a second handle, as a daemon on another host has
    time.sleep(1.1)  # claim re-lists the queue at least once a second
    assert spool.claim(SERVER)[0].task_id == "t0"


# --------------------------------------------------------------------------- retirement


def test_delete_retired_removes_old_terminal_tasks_and_returns_them(spool: Spool) -> None:
    spool.register_type("Short", "h", timeret=0.01)
    spool.register_type("Long", "h", timeret=3600)
    spool.register_type("Never", "h", timeret=0)
    spool.register_type("Minus", "h", timeret=-1)
    for type_id in ("Short", "Long", "Never", "Minus"):
        to_state(spool, type_id, "done", State.FINISHED)
        to_state(spool, type_id, "bad", State.FAILED)
        to_state(spool, type_id, "busy", State.RUNNING)
    for type_id in ("Short", "Long", "Never", "Minus"):
        to_state(spool, type_id, "waiting", State.ENQUEUED)
    time.sleep(TICK)
    assert sorted(spool.delete_retired()) == [("Short", "bad"), ("Short", "done")]
    for type_id in ("Short", "Long", "Never", "Minus"):
        for task_id in ("busy", "waiting") if type_id == "Short" else ("done", "bad", "busy", "waiting"):
            spool.status(type_id, task_id)  # still there
    for task_id in ("done", "bad"):
        with pytest.raises(TaskNotFound):
            spool.status("Short", task_id)
        spool.enqueue("Short", task_id, None)  # the id is free again
    assert spool.delete_retired() == []
    assert os.listdir(spool.path / "tmp") == []


# --------------------------------------------------------------------------- self-validating files


class Boom:
    """Unpickling this creates the directory ``path``: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def evil_payload(marker: Path, type_id: str = "T", task_id: str = "evil") -> bytes:
    record = {"type": type_id, "id": task_id, "input": Boom(str(marker)), "enqueued": 0.0, "message": "", "slot": None}
    return pickle.dumps(record)


def wrong_checksum(payload: bytes) -> bytes:
    sealed = seal(TASK_MAGIC, payload)
    head, _, body = sealed.partition(b"\n")
    digest = head.split(b" ")[3]
    flipped = (b"0" if digest[:1] != b"0" else b"1") + digest[1:]
    return head.replace(digest, flipped) + b"\n" + body


def test_the_evil_payload_really_creates_its_marker_when_unpickled(tmp_path: Path) -> None:
    """The detector of the tests below works: a correctly sealed evil task would be caught."""
    marker = tmp_path / "marker"
    pickle.loads(evil_payload(marker))
    assert marker.is_dir()


def test_a_correctly_sealed_evil_task_is_unpickled_at_claim(spool: Spool, T: str, tmp_path: Path) -> None:
    """The checksum guards against damage, not against someone who may write to the spool."""
    marker = tmp_path / "marker"
    key = make_key(T, "evil", time.time_ns())
    os.mkdir(spool.path / "enqueued" / key)
    (spool.path / "enqueued" / key / "task").write_bytes(seal(TASK_MAGIC, evil_payload(marker)))
    spool.claim(SERVER)
    assert marker.is_dir()


def plant(spool: Spool, kind: str, key: str, marker: Path, outside: Path) -> None:
    """Put a bad entry named ``key`` in enqueued/; none of them may ever be unpickled."""
    entry = spool.path / "enqueued" / key
    evil = evil_payload(marker)
    if kind == "plain file":
        entry.write_bytes(seal(TASK_MAGIC, evil))  # a valid-looking task, but not a directory
        return
    if kind == "symlink to a directory outside":
        outside.mkdir()
        (outside / "task").write_bytes(seal(TASK_MAGIC, evil))
        os.symlink(outside, entry)
        return
    entry.mkdir()
    task = entry / "task"
    if kind == "truncated":
        task.write_bytes(seal(TASK_MAGIC, evil)[:-7])
    elif kind == "garbage":
        task.write_bytes(os.urandom(200) + b"\n" + evil)
    elif kind == "wrong checksum":
        task.write_bytes(wrong_checksum(evil))
    elif kind == "wrong magic":
        task.write_bytes(seal(b"SOMETHING-ELSE", evil))
    elif kind == "future format":
        task.write_bytes(seal(TASK_MAGIC, evil).replace(b"SPOOLATP-TASK 1 ", b"SPOOLATP-TASK 9 ", 1))
    elif kind == "empty file":
        task.write_bytes(b"")
    elif kind == "no task file":
        pass
    elif kind == "task file is a symlink outside":
        outside.mkdir()
        (outside / "task").write_bytes(seal(TASK_MAGIC, evil))
        os.symlink(outside / "task", task)
    else:
        raise AssertionError(kind)


BAD_ENTRIES = [
    "truncated",
    "garbage",
    "wrong checksum",
    "wrong magic",
    "future format",
    "empty file",
    "no task file",
    "task file is a symlink outside",
    "plain file",
    "symlink to a directory outside",
]


def test_a_task_file_a_network_mount_falsely_reports_missing_is_given_back_until_that_persists(
    spool: Spool, T: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GlusterFS may answer ENOENT for a file in a directory renamed a moment ago, for longer than the
    # retries of read_settled, while a readdir of that directory lists it; the task is whole
    monkeypatch.setenv(fsio.NETWORK_FS_ENV, "1")
    consumer = Spool(spool.path)
    assert not consumer.local
    spool.enqueue(T, "Task001", 7)
    real = fsio.read_settled

    def false_enoent(file: fsio.PathArg, **how: bool) -> bytes:
        if os.fspath(file).endswith("/task"):  # the injected fault: the mount's false answer, nothing else
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(file))
        return real(file, **how)

    monkeypatch.setattr(fsio, "read_settled", false_enoent)
    with pytest.raises(QueueEmpty):
        consumer.claim(SERVER)
    assert os.listdir(spool.path / "quarantine") == []
    assert spool.status(T, "Task001") is State.ENQUEUED  # given back, its attempt not counted
    monkeypatch.setattr(fsio, "read_settled", real)
    (claim,) = Spool(spool.path).claim(SERVER)
    assert (claim.task_id, claim.attempt) == ("Task001", 1)
    assert spool.start(claim).input == 7
    # a mount that keeps saying so is failing: the task is given back a few times, then quarantined, so that
    # it does not cost every claim of every worker two seconds of retries forever
    spool.enqueue(T, "Task002", 8)
    monkeypatch.setattr(fsio, "read_settled", false_enoent)
    for _ in range(spoolmod.FALSE_MISSING_LIMIT):
        with pytest.raises(QueueEmpty):
            Spool(spool.path).claim(SERVER)
        assert spool.status(T, "Task002") is State.ENQUEUED
    with pytest.raises(QueueEmpty):
        Spool(spool.path).claim(SERVER)
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task002")
    [reason] = [n for n in os.listdir(spool.path / "quarantine") if n.endswith(".reason")]
    assert "the mount may be failing" in (spool.path / "quarantine" / reason).read_text()


@pytest.mark.parametrize("kind", BAD_ENTRIES)
def test_a_bad_entry_in_enqueued_is_quarantined_never_unpickled_and_others_flow(
    spool: Spool, T: str, tmp_path: Path, kind: str
) -> None:
    marker, outside = tmp_path / "marker", tmp_path / "outside"
    good_before = spool.enqueue(T, "good-before", 1)
    bad = make_key(T, "evil", time.time_ns())
    plant(spool, kind, bad, marker, outside)
    spool.enqueue(T, "good-after", 2)
    outside_before = {p: (outside / p).read_bytes() for p in os.listdir(outside)} if outside.exists() else None

    got = [c.task_id for c in spool.claim(SERVER, limit=10)]

    assert got == ["good-before", "good-after"]
    assert not marker.exists(), "a bad task file was unpickled"
    q = sorted(os.listdir(spool.path / "quarantine"))
    assert len(q) == 2 and q[0].startswith(bad) and q[1] == q[0] + ".reason", q
    assert (spool.path / "quarantine" / q[1]).read_text().strip()
    assert bad not in raw_states(spool.path)
    if outside_before is not None:
        assert {p: (outside / p).read_bytes() for p in os.listdir(outside)} == outside_before
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)
    assert good_before < bad


def test_a_quarantine_reason_says_what_was_wrong(spool: Spool, T: str, tmp_path: Path) -> None:
    bad = make_key(T, "evil", time.time_ns())
    plant(spool, "wrong checksum", bad, tmp_path / "marker", tmp_path / "outside")
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)
    (reason,) = [p for p in os.listdir(spool.path / "quarantine") if p.endswith(".reason")]
    assert "checksum mismatch" in (spool.path / "quarantine" / reason).read_text()


def test_an_entry_whose_name_is_not_a_key_is_quarantined(spool: Spool, T: str) -> None:
    (spool.path / "enqueued" / "not-a-key").mkdir()
    spool.enqueue(T, "good", None)
    assert [c.task_id for c in spool.claim(SERVER, limit=5)] == ["good"]
    assert any(p.startswith("not-a-key") for p in os.listdir(spool.path / "quarantine"))


def test_a_task_damaged_in_place_is_quarantined_and_frees_its_id(spool: Spool, T: str) -> None:
    key = spool.enqueue(T, "Task001", (1, 2, 3))
    task = spool.path / "enqueued" / key / "task"
    task.write_bytes(task.read_bytes()[:-3])  # truncated on disk
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)
    assert any(p.startswith(key) for p in os.listdir(spool.path / "quarantine"))
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task001")
    spool.enqueue(T, "Task001", "resubmitted")  # not stuck behind a dangling ids/ link
    assert spool.status(T, "Task001") is State.ENQUEUED


def test_a_task_damaged_after_its_claim_fails_start_with_CorruptTaskFile(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", (1, 2, 3))
    (claim,) = spool.claim(SERVER)
    task = spool.path / "scheduled" / SERVER / claim.key / "task"
    data = task.read_bytes()
    end = journal_offset(data)  # the record's last byte flipped; the journal after it stays where it was
    task.write_bytes(data[: end - 1] + bytes([data[end - 1] ^ 1]) + data[end:])
    with pytest.raises(CorruptTaskFile):
        spool.start(claim)
    assert any(p.startswith(claim.key) for p in os.listdir(spool.path / "quarantine"))


def test_reading_the_log_never_unpickles_a_damaged_task(spool: Spool, T: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    key = spool.enqueue(T, "Task001", None)
    (spool.path / "enqueued" / key / "task").write_bytes(wrong_checksum(evil_payload(marker, T, "Task001")))
    with pytest.raises(CorruptTaskFile):
        spool.log(T, "Task001")
    assert not marker.exists()


def test_delete_works_on_a_damaged_task(spool: Spool, T: str, tmp_path: Path) -> None:
    claim = to_state(spool, T, "Task001", State.FINISHED)
    (spool.path / "finished" / claim.key / "task").write_bytes(b"garbage")  # type: ignore[attr-defined]
    spool.delete(T, "Task001")
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task001")
    assert os.listdir(spool.path / "tmp") == []
    spool.enqueue(T, "Task001", None)


# --------------------------------------------------------------------------- identifiers

BAD_IDS = [
    "",
    "x" * 10_000,
    "a/b",
    "/abs",
    "a\\b",
    "a\x00b",
    "..",
    "../escape",
    "a..b",
    ".",
    "line\nbreak",
    "tab\there",
    "bell\x07",
    "del\x7f",
    "\u200bzero-width",
    " padded",
    "padded ",
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_a_bad_identifier_raises_ValueError_and_writes_nothing(spool: Spool, T: str, bad: str) -> None:
    spool.enqueue(T, "existing", None)
    before = listing(spool.path)
    with pytest.raises(ValueError):
        spool.register_type(bad, "h")
    with pytest.raises(ValueError):
        spool.enqueue(T, bad, None)
    with pytest.raises(ValueError):
        spool.enqueue(bad, "ok", None)
    with pytest.raises(ValueError):
        spool.status(T, bad)
    with pytest.raises(ValueError):
        spool.delete(T, bad)
    with pytest.raises(ValueError):
        spool.claim(bad)
    assert listing(spool.path) == before


@pytest.mark.parametrize("bad", [None, 42, b"bytes"], ids=repr)
def test_a_non_string_identifier_raises_ValueError(spool: Spool, T: str, bad: object) -> None:
    with pytest.raises(ValueError):
        spool.enqueue(T, bad, None)  # type: ignore[arg-type]


GOOD_IDS = ["Tâche 001", "任务", "100%", "%25", "%7E", "%2E", "a~b", "~", ".hidden", ".%2E~", "a.b", "x" * 150]


@pytest.mark.parametrize("good", GOOD_IDS, ids=repr)
def test_a_good_identifier_works_end_to_end(spool: Spool, good: str) -> None:
    type_id = good[:64]
    spool.register_type(type_id, "h")
    spool.register_type("T", "h")
    assert type_id in [t.name for t in spool.types()]
    spool.enqueue(type_id, good, "as type and id")
    spool.enqueue("T", good, "as id")
    claims = spool.claim(SERVER, limit=5)
    assert sorted((c.type_id, c.task_id) for c in claims) == sorted([(type_id, good), ("T", good)])
    for claim in claims:
        assert tuple(spool.start(claim))[:2] == (claim.type_id, claim.task_id)
        spool.store_response(claim, f"response of {claim.type_id}")
        spool.finish(claim)
    assert spool.status(type_id, good) is State.FINISHED
    assert spool.response("T", good) == ("response of T", "text/xml")
    assert {(t.type_id, t.task_id) for t in spool.tasks(State.FINISHED)} == {(type_id, good), ("T", good)}
    for entry in os.listdir(spool.path / "ids") + os.listdir(spool.path / "finished"):
        assert not entry.startswith(".") and "/" not in entry
    spool.delete(type_id, good)
    spool.delete("T", good)
    assert os.listdir(spool.path / "ids") == []


@given(st.text(st.sampled_from("a.~%2E57 é任/\\\x00\n"), min_size=1, max_size=20) | st.text(min_size=1, max_size=40))
def test_identifier_encoding_round_trips_and_yields_one_safe_path_component(value: str) -> None:
    try:
        validate_id(value, "task id")
    except ValueError:
        assert (
            value == "."
            or any(c in value for c in "/\\\x00")
            or ".." in value
            or not value.isprintable()
            or (value != value.strip())
            or len(encode_name(value).encode()) > 150
        )
        return
    encoded = encode_name(value)
    assert decode_name(encoded) == value
    assert "~" not in encoded and "/" not in encoded and not encoded.startswith(".")
    assert parse_key(make_key("T", value, 123)) == ("T", value)
    if len(encoded.encode()) <= 64:
        assert parse_key(make_key(value, "x", 123)) == (value, "x")


# --------------------------------------------------------------------------- queue limit


def test_max_queue_refuses_the_task_beyond_the_limit_with_QueueFull(spool: Spool, T: str) -> None:
    assert spool.configure(max_queue=2)["max_queue"] == 2
    spool.enqueue(T, "t0", None)
    spool.enqueue(T, "t1", None)
    before = listing(spool.path)
    with pytest.raises(QueueFull, match="full"):
        spool.enqueue(T, "t2", None)
    assert listing(spool.path) == before
    with pytest.raises(TaskNotFound):
        spool.status(T, "t2")
    assert len(os.listdir(spool.path / "slots")) == 2


def test_a_dequeue_frees_a_slot(spool: Spool, T: str) -> None:
    spool.configure(max_queue=1)
    spool.enqueue(T, "t0", None)
    with pytest.raises(QueueFull):
        spool.enqueue(T, "t1", None)
    spool.claim(SERVER)
    assert os.listdir(spool.path / "slots") == []
    spool.enqueue(T, "t1", None)
    assert spool.status(T, "t1") is State.ENQUEUED


def test_deleting_an_enqueued_task_frees_its_slot(spool: Spool, T: str) -> None:
    spool.configure(max_queue=1)
    spool.enqueue(T, "t0", None)
    spool.delete(T, "t0")
    spool.enqueue(T, "t1", None)


def test_max_queue_is_seen_by_another_handle_and_zero_means_unlimited(spool: Spool, T: str) -> None:
    spool.configure(max_queue=1)
    other = Spool(spool.path)
    other.enqueue(T, "t0", None)
    with pytest.raises(QueueFull):
        other.enqueue(T, "t1", None)
    spool.configure(max_queue=0)
    time.sleep(1.05)  # settings are cached for a second
    for n in range(1, 20):
        other.enqueue(T, f"t{n}", None)


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_configure_refuses_a_bad_max_queue(spool: Spool, bad: object) -> None:
    with pytest.raises(ValueError):
        spool.configure(max_queue=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- crash recovery in tmp/


def test_sweep_tmp_puts_a_task_a_crashed_reaper_had_fenced_back_in_the_queue(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.RUNNING)
    key = claim.key  # type: ignore[attr-defined]
    os.rename(spool.path / "running" / SERVER / key, spool.path / "tmp" / f"reap~dead~{key}")  # then it died
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task001")
    assert spool.sweep_tmp(grace=0) == [f"reap~dead~{key}"]
    assert spool.status(T, "Task001") is State.ENQUEUED
    assert os.listdir(spool.path / "tmp") == []
    assert spool.info(T, "Task001").restarts == 0  # a crash of the reaper costs the task no restart
    (again,) = spool.claim(SERVER)
    assert (again.key, again.attempt) == (key, 2)


def test_sweep_tmp_finishes_the_move_of_a_task_its_holder_had_ended(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.RUNNING)
    key = claim.key  # type: ignore[attr-defined]
    spool._append(spool.path / "running" / SERVER / key, State.FINISHED, "done", claim)  # type: ignore[arg-type]
    os.rename(spool.path / "running" / SERVER / key, spool.path / "tmp" / f"reap~dead~{key}")
    spool.sweep_tmp(grace=0)
    assert spool.status(T, "Task001") is State.FINISHED


def test_sweep_tmp_undoes_an_enqueue_that_crashed_before_publishing(spool: Spool, T: str) -> None:
    spool.configure(max_queue=3)
    key = spool.enqueue(T, "Task001", None)
    os.rename(spool.path / "enqueued" / key, spool.path / "tmp" / f"enq~dead~{key}")  # the state before the rename
    with pytest.raises(TaskNotFound):
        spool.status(T, "Task001")
    assert spool.sweep_tmp(grace=0) == [f"enq~dead~{key}"]
    assert os.listdir(spool.path / "tmp") == []
    assert os.listdir(spool.path / "ids") == []
    assert os.listdir(spool.path / "slots") == []
    spool.enqueue(T, "Task001", None)


def test_sweep_tmp_completes_a_delete_that_crashed_half_way(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.FINISHED)
    key = claim.key  # type: ignore[attr-defined]
    os.rename(spool.path / "finished" / key, spool.path / "tmp" / f"del~dead~{key}")
    spool.sweep_tmp(grace=0)
    assert os.listdir(spool.path / "tmp") == []
    assert os.listdir(spool.path / "ids") == []
    spool.enqueue(T, "Task001", None)


def test_sweep_tmp_removes_stray_settings_files_and_leaked_slots(spool: Spool, T: str) -> None:
    spool.configure(max_queue=2)
    (spool.path / "tmp" / "set~dead~spool.json").write_text("{}")
    os.symlink(make_key(T, "gone", 1), spool.path / "slots" / "1")  # its enqueue died after taking the slot
    key = spool.enqueue(T, "kept", None)
    spool.sweep_tmp(grace=0)
    assert os.listdir(spool.path / "tmp") == []
    assert [os.readlink(spool.path / "slots" / n) for n in os.listdir(spool.path / "slots")] == [key]


def test_sweep_tmp_leaves_young_entries_alone(spool: Spool, T: str) -> None:
    claim = to_state(spool, T, "Task001", State.RUNNING)
    key = claim.key  # type: ignore[attr-defined]
    os.rename(spool.path / "running" / SERVER / key, spool.path / "tmp" / f"reap~live~{key}")
    assert spool.sweep_tmp() == []
    assert os.listdir(spool.path / "tmp") == [f"reap~live~{key}"]


def test_sweep_tmp_leaves_alone_an_old_task_that_was_fenced_just_now(spool: Spool, T: str) -> None:
    """A rename keeps a directory's mtime: a task claimed an hour ago looks old the moment it is fenced."""
    claim = to_state(spool, T, "Task001", State.RUNNING)
    key = claim.key  # type: ignore[attr-defined]
    path = spool.path / "running" / SERVER / key
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    os.rename(path, spool.path / "tmp" / f"reap~live~{key}")  # a live reaper, between its two renames
    assert spool.sweep_tmp() == []
    assert os.listdir(spool.path / "tmp") == [f"reap~live~{key}"]


class Later(Spool):
    """The same spool seen two hours from now (the clock is the only thing changed)."""

    def clock(self) -> float:
        return time.time() + 7200


def test_a_held_task_of_an_unregistered_type_is_failed_and_reported_by_its_ids(spool: Spool, T: str) -> None:
    to_state(spool, T, "Task001", State.RUNNING)
    os.unlink(spool.path / "types" / "T.json")
    assert Later(spool.path).reenqueue_zombies() == [(T, "Task001", State.FAILED)]
    assert spool.status(T, "Task001") is State.FAILED


@pytest.mark.parametrize("name", ["junk", "0000000000000001~..~x", "0000000000000001~T~%2E"])
def test_junk_in_a_server_directory_is_quarantined_not_reaped(spool: Spool, T: str, name: str) -> None:
    to_state(spool, T, "Task001", State.RUNNING)
    junk = spool.path / "running" / SERVER / name
    junk.mkdir()
    assert Later(spool.path).reenqueue_zombies() == [(T, "Task001", State.ENQUEUED)]
    assert not junk.exists()
    assert any(p.startswith(name) for p in os.listdir(spool.path / "quarantine"))
    assert os.listdir(spool.path / "tmp") == []


def test_a_durable_spool_runs_the_whole_task_cycle(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.configure(durable=True)
    spool.register_type("E", "testing.echo")
    spool.enqueue("E", "a", 1)
    spool.enqueue("E", "later", 2, not_before=30)
    [claim] = spool.claim("x")
    spool.start(claim)
    spool.store_response(claim, "ok", "text/plain")
    spool.finish(claim)
    assert spool.durable
    assert spool.status("E", "a") is State.FINISHED and spool.response("E", "a") == ("ok", "text/plain")
    assert spool.status("E", "later") is State.ENQUEUED


def test_a_message_that_looks_like_a_state_record_counts_as_none(spool: Spool, T: str) -> None:
    """Attempts and ends are counted from the journal's raw bytes: text in a message must never count."""
    spool.enqueue(T, "Task001", None, '"s":2, {"t":1,"s":5,"m":"x"}')
    (claim,) = spool.claim(SERVER, message='"s":2,"s":2,')
    spool.note(claim, '{"t":1.0,"s":2,"m":"fake"}\n{"t":1.0,"s":6,"m":"fake","srv":"atpd-test","att":1}')
    spool.start(claim, '"s":5,')
    assert spool.ended(claim) is None
    spool.finish(claim, '"s":2,"s":6,')
    assert spool.ended(claim) is State.FINISHED
    assert spool.info(T, "Task001").attempts == claim.attempt == 1
    with pytest.raises(ClaimLost, match="already ended"):
        spool.fail(claim)


@given(
    entries=st.lists(
        st.tuples(st.sampled_from([None, *State]), st.text(max_size=12), st.sampled_from(["s", 'x"s":2,', '{"t":'])),
        min_size=1,
        max_size=6,
    ),
    cut=st.integers(min_value=0, max_value=400),
    cut2=st.integers(min_value=0, max_value=400),
)
def test_journal_counts_from_raw_bytes_agree_with_parsing_every_line(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[State | None, str, str]], cut: int, cut2: int
) -> None:
    """Attempts and ends are read from the journal's raw bytes, parsing only the lines that can matter."""
    from spoolatp.format import Claim
    from spoolatp.spool import _count_state, _last_end, _parse_journal

    spool = Spool(tmp_path_factory.mktemp("journal") / "spool")
    task = spool.path / "tmp" / "task"
    task.mkdir()
    sealed = seal(TASK_MAGIC, b"record")
    (task / "task").write_bytes(sealed)
    for n, (state, message, server) in enumerate(entries):
        spool._append(task, state, message, Claim(str(spool.path), server, "k", n))
    data = (task / "task").read_bytes()[len(sealed) :]
    for line in data.splitlines():  # written as json.dumps writes it, which the raw reading relies on
        assert line == json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")).encode()
    # whole; torn at the end (a crash mid-write); torn with the next line glued on; damaged in the middle
    for journal in (data, data[:cut], data[:cut] + data, data[:cut] + data[cut2:]):
        records = _parse_journal(journal)
        for state in State:
            assert _count_state(journal, state) == sum(1 for r in records if r.state is state)
        ends = [r for r in records if r.state is not None and r.state.terminal]
        assert _last_end(journal) == (ends[-1] if ends else None)


def test_file_systems_are_told_apart_and_the_setting_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fsio.NETWORK_FS_ENV, raising=False)
    assert fsio.network_fs("/proc")  # not a file system known to be local: the careful paths
    monkeypatch.setenv(fsio.NETWORK_FS_ENV, "1")
    assert fsio.network_fs(tmp_path)
    monkeypatch.setenv(fsio.NETWORK_FS_ENV, "0")
    assert not fsio.network_fs("/proc")


def test_a_line_another_writer_appended_to_a_held_task_is_checked_and_the_attempt_goes_on(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    journal = spool.path / "running" / SERVER / claim.key / "task"  # format 2: the journal ends the task file
    with open(journal, "ab") as f:  # not this process's line: its size no longer proves the holder
        f.write(b'{"t":1.0,"s":null,"m":"from elsewhere"}\n')
    spool.note(claim, "still mine")
    spool.finish(claim)
    messages = [r.message for r in spool.log(T, "Task001")]
    assert messages[-3:] == ["from elsewhere", "still mine", "finished"]
    assert spool.status(T, "Task001") is State.FINISHED


def test_finish_if_not_done_leaves_a_task_another_handle_ended(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    spool.start(claim)
    Spool(spool.path).fail(claim, "ended through another handle")  # as a handler's TaskStatus does
    assert spool.cancel_requested(claim) is None
    assert spool.finish_if_not_done(claim) is False
    assert spool.status(T, "Task001") is State.FAILED
    assert [r.message for r in spool.log(T, "Task001")][-1] == "ended through another handle"


def test_a_file_planted_where_a_claim_would_go_holds_back_only_that_task(spool: Spool, T: str) -> None:
    first = spool.enqueue(T, "Task001", None)
    spool.enqueue(T, "Task002", None)
    (spool.path / "scheduled" / SERVER).mkdir(parents=True, exist_ok=True)
    (spool.path / "scheduled" / SERVER / first).write_text("planted")
    assert [c.task_id for c in spool.claim(SERVER, limit=2)] == ["Task002"]
    assert spool.status(T, "Task001") is State.ENQUEUED


def test_a_cancel_is_seen_after_another_handle_started_the_task(spool: Spool, T: str) -> None:
    spool.enqueue(T, "Task001", None)
    (claim,) = spool.claim(SERVER)
    Spool(spool.path).start(claim)  # this handle still remembers the task in scheduled/
    spool.cancel(T, "Task001", by="alice")
    assert spool.cancel_requested(claim) == "alice"


def test_a_task_file_whose_length_is_absurd_is_set_aside_and_stops_no_sweep(spool: Spool, T: str) -> None:
    """A planted length of 10**25 must not reach lseek: readers see no journal, the claim quarantines the task."""
    spool.enqueue(T, "Task001", None)
    claim, _ = spool.claim_and_start(SERVER)
    task = spool.path / "running" / SERVER / claim.key / "task"
    data = task.read_bytes()
    header, _, rest = data.partition(b"\n")
    fields = header.split(b" ")
    fields[2] = b"9" * 25
    task.write_bytes(b" ".join(fields) + b"\n" + rest + b"x" * 70000)  # past one read: the journal would be sought
    assert spool.info(T, "Task001").attempts == 0  # no journal to be found
    spool.recover(SERVER, "its daemon died")  # re-enqueues it (an append needs no offset), raises nothing
    with pytest.raises(QueueEmpty):
        spool.claim(SERVER)
    assert any(n.startswith(claim.key) for n in os.listdir(spool.path / "quarantine"))
