"""The ATP guide's camelCase API: its producer and consumer, and the odd call orders it allows.

The end-to-end tests run the guide's code in separate real processes that share
a spool only through ``SPOOLATP_SPOOL``; the handler is the guide's, defined
inline in the consumer (finding handlers through plugins is tested elsewhere).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spoolatp import ClaimLost, Spool, TaskExists, TaskNotFound, UnknownTaskType, tracker
from spoolatp.tracker import (
    QueueEmpty,
    QueueException,
    QueueFull,
    TaskStatus,
    deleteRetiredTasks,
    deleteTaskByIdentifier,
    dequeueTask,
    enqueueTask,
    getTaskLog,
    getTaskResponse,
    getTaskStatus,
    getTaskStatusByIdentifier,
    reenqueueZombieTasks,
    registerTaskType,
    startTask,
    stopTaskSuccessIfNotFinished,
)

SERVER_ID = "atpd-guide"


def run_python(
    script: str, spool_path: Path, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter with ``SPOOLATP_SPOOL`` pointing at ``spool_path``."""
    env = {**os.environ, "SPOOLATP_SPOOL": str(spool_path), "PYTHONWARNINGS": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# The guide's consumer loop body, in Python 3, around the guide's handler.
CONSUMER = """
import sys
import time
from spoolatp.tracker import *

SERVER_ID = "atpd-guide"
QUEUE_EMPTY_QUERY_DELAY = 0.02
TASKS = int(sys.argv[1])

def handler( taskStatus , input ) :
    \"\"\" example ATP handler subroutine \"\"\"
    sum = 0
    # sum the values
    for val in input :
        try :
            sum += float( val )
        except ValueError:
            # stop in case on ivalid input
            taskStatus.setFailure("Input must be a sequence of numbers!")
    # store the response and terminate
    taskStatus.storeResponse( str(sum) )

# the guide imports the handler by its dotted path; spoolatp names it, so a dict stands in for the plugins
HANDLERS = { "sequence_sum" : handler }

done = 0
deadline = time.monotonic() + 50
while done < TASKS and time.monotonic() < deadline :
    try :
        # get a pending task from the queue
        taskIds = dequeueTask( SERVER_ID )
    except QueueEmpty : # no task to be processed
        # wait some ammount of time
        time.sleep( QUEUE_EMPTY_QUERY_DELAY )
        continue
    for taskId in taskIds :
        # create instance of TaskStatus class
        pStatus = TaskStatus( taskId )
        try :
            # get task parameters and change status to STARTED
            requestType , requestID , requestHandler , inputs = startTask( taskId )
            # load the handler
            run = HANDLERS[ requestHandler ]
            # execute handler
            run( pStatus , inputs )
            # if no terminating status has been set do it right now
            stopTaskSuccessIfNotFinished( taskId )
        except Exception as e :
            pStatus.setFailure( str(e) )
        done += 1
print( "consumed" , done )
"""

# The guide's producer, steps 2 to 7, in Python 3; it also prints what it saw as JSON for the test.
PRODUCER = """
import json
import sys
import time
from spoolatp.tracker import \\
    registerTaskType, enqueueTask, QueueFull, \\
    getTaskStatusByIdentifier, getTaskResponse, deleteTaskByIdentifier, getTaskLog

POLL = 0.02
TASKS = json.loads(sys.argv[1])

registerTaskType( "SequenceSum" , "sequence_sum" , 60 , 600 , 3 )

for taskId , input in TASKS :
    while True :
        try :
            enqueueTask( "SequenceSum" , taskId , tuple(input) )
            break
        except QueueFull : # retry if queue full
            print( "QueueFull!" )
            time.sleep( POLL )

for taskId , input in TASKS :
    while True :
        status = getTaskStatusByIdentifier( "SequenceSum" , taskId )
        print( time.asctime() , "Status: " , status[1] )
        if status[1] in ( "FINISHED" , "FAILED" ) : break
        time.sleep( POLL )

    print( "Processing history:" )
    for rec in getTaskLog( "SequenceSum" , taskId ) :
        print( "-" , rec[0] , "Status: " , rec[1][1] , "\\t" , rec[2] )

    response = None
    try :
        response = getTaskResponse( "SequenceSum" , taskId )
    except LookupError :
        pass
    if status[1] == "FINISHED" :
        print( "Result: " , getTaskResponse( "SequenceSum" , taskId ) )

    log = [ ( rec[0].isoformat() , list( rec[1] ) , rec[2] ) for rec in getTaskLog( "SequenceSum" , taskId ) ]
    print( "JSON" , json.dumps( { "id" : taskId , "status" : list( status ) , "log" : log , "response" : response } ) )

    deleteTaskByIdentifier( "SequenceSum" , taskId )
"""


def python(script: str, spool_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SPOOLATP_SPOOL": str(spool_path), "PYTHONWARNINGS": "error"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_guide(spool_path: Path, tasks: list[tuple[str, tuple[object, ...]]]) -> dict[str, dict[str, object]]:
    """Run the guide's consumer and producer as two processes; return what the producer saw per task."""
    consumer = python(CONSUMER, spool_path, str(len(tasks)))
    try:
        producer = run_python(PRODUCER, spool_path, json.dumps(tasks))
        out, err = consumer.communicate(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, err
    assert out.split() == ["consumed", str(len(tasks))]
    seen = [json.loads(line[5:]) for line in producer.stdout.splitlines() if line.startswith("JSON ")]
    return {entry["id"]: entry for entry in seen}


def test_the_guides_producer_and_consumer_run_a_task_to_FINISHED_in_two_processes(spool_path: Path) -> None:
    seen = run_guide(spool_path, [("Task001", (1, 2, 3, 4, 5))])
    task = seen["Task001"]
    assert task["status"] == [5, "FINISHED"]
    assert task["response"] == ["15.0", "text/xml"]
    assert [tuple(rec[1]) for rec in task["log"]] == [
        (1, "ENQUEUED"),
        (2, "SCHEDULED"),
        (3, "RUNNING"),
        (5, "FINISHED"),
    ]
    times = [datetime.datetime.fromisoformat(rec[0]) for rec in task["log"]]
    assert times == sorted(times)
    assert "SCHEDULED" in task["log"][1][1] and SERVER_ID in task["log"][1][2]
    # the producer deleted it: nothing is left in any state
    spool = Spool(spool_path)
    assert list(spool.tasks()) == []
    assert os.listdir(spool_path / "ids") == []


def test_the_guides_handler_on_bad_input_fails_the_task_and_keeps_its_first_failure(spool_path: Path) -> None:
    """setFailure twice, then storeResponse, then stopTaskSuccessIfNotFinished: the guide's odd call order."""
    seen = run_guide(spool_path, [("Task001", (1, 2)), ("Task002", (1, "two", 3, "four"))])
    assert seen["Task001"]["status"] == [5, "FINISHED"]
    assert seen["Task001"]["response"] == ["3.0", "text/xml"]
    task = seen["Task002"]
    assert task["status"] == [6, "FAILED"]
    assert task["response"] == ["4.0", "text/xml"]  # stored after the failure, and kept
    log = [(tuple(rec[1]), rec[2]) for rec in task["log"]]
    assert log[:4] == [
        ((1, "ENQUEUED"), "enqueued"),
        ((2, "SCHEDULED"), f"scheduled on {SERVER_ID}"),
        ((3, "RUNNING"), "started"),
        ((6, "FAILED"), "Input must be a sequence of numbers!"),
    ]
    assert [state for state, _ in log[4:]] == [(6, "FAILED")]  # the second setFailure is only a note
    assert "already FAILED" in log[4][1]


def test_the_guides_consumer_reports_an_input_it_cannot_unpickle_as_a_failure(spool_path: Path) -> None:
    """An input of a class only the producer has must fail its task, not crash dequeueTask."""
    run_python(
        """
        from spoolatp.tracker import registerTaskType, enqueueTask

        class Point:  # exists only in this producer's __main__
            def __init__(self, x):
                self.x = x

        registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)
        enqueueTask("SequenceSum", "Task001", Point(1))
        enqueueTask("SequenceSum", "Task002", (1, 2))
        """,
        spool_path,
    )
    consumer = python(CONSUMER, spool_path, "2")
    out, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    spool = Spool(spool_path)
    assert spool.status("SequenceSum", "Task001").name == "FAILED"
    assert "Point" in spool.log("SequenceSum", "Task001")[-1].message
    assert spool.status("SequenceSum", "Task002").name == "FINISHED"
    spool.delete("SequenceSum", "Task001")  # and a process without the class can delete it
    with pytest.raises(TaskNotFound):
        spool.status("SequenceSum", "Task001")


# A consumer whose handler waits for the test's go-ahead, then tries every late write.
LATE_CONSUMER = """
import os
import sys
import time
from spoolatp.tracker import *
from spoolatp import ClaimLost

go, ready = sys.argv[1], sys.argv[2]
(taskId,) = dequeueTask("atpd-slow")
pStatus = TaskStatus(taskId)
startTask(taskId)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
for name, call in [
    ("log", lambda: pStatus.log("late note")),
    ("progress", lambda: pStatus.progress(0.9, "late progress")),
    ("storeResponse", lambda: pStatus.storeResponse("late response")),
    ("setSuccess", lambda: pStatus.setSuccess("late success")),
    ("setFailure", lambda: pStatus.setFailure("late failure")),
    ("stopTaskSuccessIfNotFinished", lambda: stopTaskSuccessIfNotFinished(taskId)),
]:
    try:
        call()
        print(name, "ACCEPTED")
    except ClaimLost:
        print(name, "ClaimLost")
print("status", getTaskStatus(taskId)[1])
"""


def test_a_consumer_process_whose_task_was_reenqueued_gets_ClaimLost_on_every_late_write(
    tracker_spool: Spool, tmp_path: Path
) -> None:
    registerTaskType("Slow", "sequence_sum", 0.2, 600, 3)
    enqueueTask("Slow", "Task001", (1, 2, 3))
    go, ready = tmp_path / "go", tmp_path / "ready"
    consumer = python(LATE_CONSUMER, tracker_spool.path, str(go), str(ready))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert consumer.poll() is None and time.monotonic() < deadline, consumer.communicate()
            time.sleep(0.01)
        assert reenqueueZombieTasks() == []  # not yet: the timeout has not passed
        time.sleep(0.3)
        assert reenqueueZombieTasks() == [("Slow", "Task001", "ENQUEUED")]
        log_before = getTaskLog("Slow", "Task001")
        go.touch()
        out, err = consumer.communicate(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, err
    results = dict(line.split(" ", 1) for line in out.splitlines())
    assert results == {
        "log": "ClaimLost",
        "progress": "ClaimLost",
        "storeResponse": "ClaimLost",
        "setSuccess": "ClaimLost",
        "setFailure": "ClaimLost",
        "stopTaskSuccessIfNotFinished": "ClaimLost",
        "status": "ENQUEUED",
    }
    assert getTaskStatusByIdentifier("Slow", "Task001") == (1, "ENQUEUED")
    assert getTaskLog("Slow", "Task001") == log_before
    with pytest.raises(LookupError):
        getTaskResponse("Slow", "Task001")


# --------------------------------------------------------------------------- the API in one process


def run_one(handler: object, task_id: str = "Task001", input: object = (1, 2, 3)) -> None:
    """Enqueue one SequenceSum task and run it through the guide's consumer body with ``handler``."""
    enqueueTask("SequenceSum", task_id, input)
    (taskId,) = dequeueTask(SERVER_ID)
    pStatus = TaskStatus(taskId)
    try:
        requestType, requestID, requestHandler, inputs = startTask(taskId)
        assert (requestType, requestID, requestHandler, inputs) == ("SequenceSum", task_id, "sequence_sum", input)
        handler(pStatus, inputs)  # type: ignore[operator]
        stopTaskSuccessIfNotFinished(taskId)
    except Exception as e:
        pStatus.setFailure(str(e))


@pytest.fixture
def sequence_sum(tracker_spool: Spool) -> Spool:
    registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)
    return tracker_spool


def test_registerTaskType_stores_the_guides_arguments(sequence_sum: Spool) -> None:
    ttype = sequence_sum.get_type("SequenceSum")
    assert (ttype.handler, ttype.timeout, ttype.timeret, ttype.maxrestart) == ("sequence_sum", 60, 600, 3)


def test_the_status_pair_follows_every_transition(sequence_sum: Spool) -> None:
    enqueueTask("SequenceSum", "Task001", (1,))
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (1, "ENQUEUED")
    (taskId,) = dequeueTask(SERVER_ID)
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (2, "SCHEDULED")
    assert getTaskStatus(taskId) == (2, "SCHEDULED")
    startTask(taskId)
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (3, "RUNNING")
    stopTaskSuccessIfNotFinished(taskId)
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (5, "FINISHED")
    assert getTaskStatus(taskId) == (5, "FINISHED")


def test_getTaskLog_gives_time_state_pair_and_message_with_handler_records(sequence_sum: Spool) -> None:
    def handler(taskStatus: TaskStatus, input: object) -> None:
        taskStatus.log("summing")
        taskStatus.progress(0.5, "half")
        taskStatus.storeResponse("6.0")

    run_one(handler)
    log = getTaskLog("SequenceSum", "Task001")
    assert [(rec[1], rec[2]) for rec in log] == [
        ((1, "ENQUEUED"), "enqueued"),
        ((2, "SCHEDULED"), f"scheduled on {SERVER_ID}"),
        ((3, "RUNNING"), "started"),
        ((3, "RUNNING"), "summing"),
        ((3, "RUNNING"), "[50%] half"),
        ((5, "FINISHED"), "finished"),
    ]
    assert all(isinstance(rec[0], datetime.datetime) for rec in log)
    assert [rec[0] for rec in log] == sorted(rec[0] for rec in log)


def test_getTaskResponse_returns_the_response_and_its_mime_type(sequence_sum: Spool) -> None:
    run_one(lambda s, i: s.storeResponse('{"sum": 6}', "application/json"))
    assert getTaskResponse("SequenceSum", "Task001") == ('{"sum": 6}', "application/json")
    run_one(lambda s, i: s.storeResponse("<sum>6</sum>"), "Task002")
    assert getTaskResponse("SequenceSum", "Task002") == ("<sum>6</sum>", "text/xml")


def test_a_handler_that_ends_its_task_itself_is_not_overridden(sequence_sum: Spool) -> None:
    run_one(lambda s, i: s.setSuccess("handler says done"))
    log = getTaskLog("SequenceSum", "Task001")
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (5, "FINISHED")
    assert [rec[2] for rec in log if rec[1][1] == "FINISHED"] == ["handler says done"]


def test_stopTaskSuccessIfNotFinished_after_setFailure_changes_nothing(sequence_sum: Spool) -> None:
    run_one(lambda s, i: s.setFailure("bad"))
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (6, "FAILED")
    assert [rec[2] for rec in getTaskLog("SequenceSum", "Task001")][-1] == "bad"


def test_setSuccess_after_setFailure_keeps_FAILED_and_notes_the_call(sequence_sum: Spool) -> None:
    def handler(s: TaskStatus, i: object) -> None:
        s.setFailure("first")
        s.setSuccess("second")
        s.log("after the end")

    run_one(handler)
    log = getTaskLog("SequenceSum", "Task001")
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (6, "FAILED")
    assert [rec[2] for rec in log[3:]] == ["first", "second (task already FAILED)", "after the end"]


def test_an_exception_in_the_handler_fails_the_task_with_its_message(sequence_sum: Spool) -> None:
    def handler(s: TaskStatus, i: object) -> None:
        raise RuntimeError("disk on fire")

    run_one(handler)
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (6, "FAILED")
    assert getTaskLog("SequenceSum", "Task001")[-1][2] == "disk on fire"


@pytest.mark.parametrize(
    "call",
    [getTaskStatusByIdentifier, getTaskLog, getTaskResponse, deleteTaskByIdentifier],
    ids=lambda f: f.__name__,
)
def test_an_unknown_task_raises_TaskNotFound(sequence_sum: Spool, call: object) -> None:
    enqueueTask("SequenceSum", "Task001", ())
    with pytest.raises(TaskNotFound):
        call("SequenceSum", "Task999")  # type: ignore[operator]
    with pytest.raises(TaskNotFound):
        call("OtherType", "Task001")  # type: ignore[operator]


def test_enqueueTask_of_an_unregistered_type_raises_UnknownTaskType(tracker_spool: Spool) -> None:
    with pytest.raises(UnknownTaskType):
        enqueueTask("SequenceSum", "Task001", ())


def test_enqueueTask_twice_raises_TaskExists_and_two_types_may_share_an_id(sequence_sum: Spool) -> None:
    registerTaskType("Other", "other", 60, 600, 3)
    enqueueTask("SequenceSum", "Task001", ())
    with pytest.raises(TaskExists):
        enqueueTask("SequenceSum", "Task001", ())
    enqueueTask("Other", "Task001", ())
    assert getTaskStatusByIdentifier("Other", "Task001") == (1, "ENQUEUED")


def test_dequeueTask_of_an_empty_queue_raises_the_guides_QueueEmpty(sequence_sum: Spool) -> None:
    with pytest.raises(QueueEmpty) as info:
        dequeueTask(SERVER_ID)
    assert isinstance(info.value, QueueException)


def test_enqueueTask_on_a_full_queue_raises_the_guides_QueueFull(sequence_sum: Spool) -> None:
    sequence_sum.configure(max_queue=1)
    enqueueTask("SequenceSum", "Task001", ())
    with pytest.raises(QueueFull) as info:
        enqueueTask("SequenceSum", "Task002", ())
    assert isinstance(info.value, QueueException)
    dequeueTask(SERVER_ID)
    enqueueTask("SequenceSum", "Task002", ())


@pytest.mark.parametrize("stage", ["ENQUEUED", "SCHEDULED", "RUNNING", "FINISHED", "FAILED"])
def test_deleteTaskByIdentifier_removes_a_task_in_every_state(sequence_sum: Spool, stage: str) -> None:
    enqueueTask("SequenceSum", "Task001", ())
    if stage != "ENQUEUED":
        (taskId,) = dequeueTask(SERVER_ID)
        if stage != "SCHEDULED":
            startTask(taskId)
            if stage == "FINISHED":
                TaskStatus(taskId).setSuccess()
            elif stage == "FAILED":
                TaskStatus(taskId).setFailure()
    assert getTaskStatusByIdentifier("SequenceSum", "Task001")[1] == stage
    deleteTaskByIdentifier("SequenceSum", "Task001")
    with pytest.raises(TaskNotFound):
        getTaskStatusByIdentifier("SequenceSum", "Task001")
    if stage in ("SCHEDULED", "RUNNING"):
        with pytest.raises(ClaimLost):
            stopTaskSuccessIfNotFinished(taskId)
    enqueueTask("SequenceSum", "Task001", ())


def test_reenqueueZombieTasks_enforces_maxrestart(tracker_spool: Spool) -> None:
    registerTaskType("Z", "h", 0.001, 600, 2)
    enqueueTask("Z", "Task001", ())
    ends = []
    for _ in range(3):
        (taskId,) = dequeueTask(SERVER_ID)
        startTask(taskId)
        time.sleep(0.02)
        ends += reenqueueZombieTasks()
    assert ends == [("Z", "Task001", "ENQUEUED"), ("Z", "Task001", "ENQUEUED"), ("Z", "Task001", "FAILED")]
    assert getTaskStatusByIdentifier("Z", "Task001") == (6, "FAILED")
    assert "restart limit of 2 used up" in getTaskLog("Z", "Task001")[-1][2]


def test_deleteRetiredTasks_removes_what_outlived_timeret(tracker_spool: Spool) -> None:
    registerTaskType("Short", "h", 60, 0.01, 3)
    registerTaskType("Kept", "h", 60, -1, 3)
    for type_id in ("Short", "Kept"):
        enqueueTask(type_id, "Task001", ())
        (taskId,) = dequeueTask(SERVER_ID)
        startTask(taskId)
        stopTaskSuccessIfNotFinished(taskId)
    time.sleep(0.05)
    assert deleteRetiredTasks() == [("Short", "Task001")]
    assert getTaskStatusByIdentifier("Kept", "Task001") == (5, "FINISHED")
    enqueueTask("Short", "Task001", ())


def test_a_task_handle_must_come_from_dequeueTask(sequence_sum: Spool) -> None:
    with pytest.raises(TypeError, match="dequeueTask"):
        startTask(("SequenceSum", "Task001"))  # type: ignore[arg-type]


def test_the_tracker_uses_SPOOLATP_SPOOL_unless_a_spool_was_selected(
    spool_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLATP_SPOOL", str(spool_path))
    monkeypatch.setattr(tracker, "_selected", None)
    assert tracker.current_spool().path == spool_path
    other = tmp_path / "other"
    monkeypatch.setattr(tracker, "_selected", str(other))
    assert tracker.current_spool().path == other


def test_star_import_gives_the_guides_consumer_names() -> None:
    names: dict[str, object] = {}
    exec("from spoolatp.tracker import *", names)
    for name in ("dequeueTask", "startTask", "TaskStatus", "stopTaskSuccessIfNotFinished", "QueueEmpty"):
        assert name in names
