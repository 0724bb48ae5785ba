"""The ATP tracker API of EOxServer, name for name, over a spool directory.

The ATP developers' guide's producer and consumer run unchanged but for the
import line (``from spoolatp.tracker import ...``) and the handler, which is
given by its plugin name instead of a dotted import path::

    registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)
    enqueueTask("SequenceSum", "Task001", (1, 2, 3, 4, 5))

The spool is the directory named by ``SPOOLATP_SPOOL`` (else the per-user
default of :func:`spoolatp.spool.default_spool_path`); :func:`use_spool`
selects another one for this process. Task handles returned by
:func:`dequeueTask` are :class:`spoolatp.spool.Claim` objects.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from spoolatp.errors import ClaimLost, QueueEmpty, QueueException, QueueFull
from spoolatp.format import Claim, State, TaskType
from spoolatp.spool import Spool

__all__ = [
    "QueueEmpty",
    "QueueException",
    "QueueFull",
    "TaskStatus",
    "current_spool",
    "deleteRetiredTasks",
    "deleteTaskByIdentifier",
    "dequeueTask",
    "enqueueTask",
    "getTaskLog",
    "getTaskResponse",
    "getTaskStatus",
    "getTaskStatusByIdentifier",
    "reenqueueZombieTasks",
    "registerTaskType",
    "startTask",
    "stopTaskSuccessIfNotFinished",
    "use_spool",
]

_spools: dict[str, Spool] = {}
_selected: str | None = None


def _open(path: str | os.PathLike[str]) -> Spool:
    key = os.path.abspath(path)
    spool = _spools.get(key)
    if spool is None:
        from spoolatp import plugins  # plugins observe task life through the spool's event seam

        spool = _spools[key] = Spool(key, on_event=plugins.notify)
    return spool


def use_spool(path: str | os.PathLike[str]) -> Spool:
    """Select the spool this process's tracker calls work on (created if missing)."""
    global _selected
    spool = _open(path)
    _selected = str(spool.path)
    return spool


def current_spool() -> Spool:
    """The selected spool, else ``$SPOOLATP_SPOOL``, else the per-user default."""
    if _selected is not None:
        return _open(_selected)
    from spoolatp.spool import default_spool_path

    return _open(default_spool_path())


# --------------------------------------------------------------------------- producer


def registerTaskType(
    identifier: str, handler: str, timeout: float = 3600, timeret: float = -1, maxrestart: int = 2
) -> None:
    """Create or update a task type whose tasks run the handler plugin named ``handler``."""
    current_spool().register_type(identifier, handler, timeout, timeret, maxrestart)


def enqueueTask(typeId: str, taskId: str, input: Any, message: str = "") -> None:
    """Create a task. :raises QueueFull: :raises spoolatp.TaskExists: :raises spoolatp.UnknownTaskType:"""
    current_spool().enqueue(typeId, taskId, input, message)


def getTaskStatusByIdentifier(typeId: str, taskId: str) -> tuple[int, str]:
    """``(code, name)``, e.g. ``(1, "ENQUEUED")``. :raises spoolatp.TaskNotFound:"""
    return current_spool().status(typeId, taskId).pair()


def getTaskLog(typeId: str, taskId: str) -> list[tuple[datetime, tuple[int, str], str]]:
    """The task's history, oldest first: ``(time, (code, name), message)`` per record.

    Records the handler logged carry the state the task was in at that time.
    """
    out = []
    state = State.ENQUEUED
    for rec in current_spool().log(typeId, taskId):
        state = rec.state or state
        message = rec.message
        if rec.progress is not None:
            message = f"[{rec.progress:.0%}] {message}".rstrip()
        out.append((rec.when, state.pair(), message))
    return out


def getTaskResponse(typeId: str, taskId: str) -> tuple[Any, str]:
    """``(response, mimeType)`` as stored by the handler. :raises spoolatp.ResponseNotFound:"""
    return current_spool().response(typeId, taskId)


def deleteTaskByIdentifier(typeId: str, taskId: str) -> None:
    """Remove the task in whatever state it is. :raises spoolatp.TaskNotFound:"""
    current_spool().delete(typeId, taskId)


# --------------------------------------------------------------------------- consumer


def dequeueTask(serverId: str, message: str = "") -> list[Claim]:
    """Pull (usually) one task: ENQUEUED -> SCHEDULED. :raises QueueEmpty:"""
    return current_spool().claim(serverId, message=message)


def startTask(taskHandle: Claim) -> tuple[str, str, str, Any]:
    """SCHEDULED -> RUNNING; ``(typeId, taskId, handlerName, input)``."""
    started = _spool_of(taskHandle).start(taskHandle)
    return started.type_id, started.task_id, started.handler, started.input


def stopTaskSuccessIfNotFinished(taskHandle: Claim, message: str = "") -> None:
    """FINISHED, unless the handler already gave the task a terminal state."""
    _spool_of(taskHandle).finish_if_not_done(taskHandle, message)


def getTaskStatus(taskHandle: Claim) -> tuple[int, str]:
    """``(code, name)`` of the task behind a handle."""
    return TaskStatus(taskHandle).getStatus()


class TaskStatus:
    """What a handler gets to report on its task (the guide's ``taskStatus``)."""

    def __init__(self, taskHandle: Claim) -> None:
        self.handle = taskHandle
        self._spool = _spool_of(taskHandle)
        #: the terminal state this object gave the task, if any (the daemon then need not look)
        self.ended: State | None = None

    def setSuccess(self, message: str = "") -> None:
        """End the task as FINISHED (a later terminal call only adds to the log)."""
        self._end(State.FINISHED, message)

    def setFailure(self, message: str = "") -> None:
        """End the task as FAILED (a later terminal call only adds to the log)."""
        self._end(State.FAILED, message)

    def _end(self, state: State, message: str) -> None:
        ended = self._spool.ended(self.handle)
        if ended is None:
            (self._spool.finish if state is State.FINISHED else self._spool.fail)(self.handle, message)
            self.ended = state
        else:  # the guide's handler may call setFailure once per bad value: keep the first end
            self._spool.note(self.handle, f"{message} (task already {ended.name})".strip())

    def storeResponse(self, response: str | bytes, mimeType: str = "text/xml") -> None:
        """Store the task's response (allowed after a terminal state set by this attempt)."""
        self._spool.store_response(self.handle, response, mimeType)

    def log(self, message: str) -> None:
        """Add a message to the task's log."""
        self._spool.note(self.handle, message)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress, a fraction between 0 and 1, shown in the task's status and log."""
        self._spool.note(self.handle, message, progress=float(fraction))

    def cancelled(self) -> bool:
        """Whether someone asked to cancel this task; a handler should stop soon when it is."""
        return self._spool.cancel_requested(self.handle) is not None

    @property
    def task_type(self) -> TaskType:
        """The task's registered type, with the ``options`` fixed at registration."""
        return self._spool.get_type(self.handle.type_id)

    def getStatus(self) -> tuple[int, str]:
        ended = self._spool.ended(self.handle)
        if ended is not None:
            return ended.pair()
        try:
            return self._spool._claim_path(self.handle)[1].pair()
        except ClaimLost:
            return self._spool.status(self.handle.type_id, self.handle.task_id).pair()


def _spool_of(handle: Claim) -> Spool:
    if not isinstance(handle, Claim):
        raise TypeError(f"expected a task handle from dequeueTask(), not {type(handle).__name__} ({handle!r})")
    return _open(handle.spool)


# --------------------------------------------------------------------------- maintenance


def reenqueueZombieTasks(message: str = "") -> list[tuple[str, str, str]]:
    """Re-enqueue abandoned tasks (FAILED once ``maxrestart`` is used up); return ``(type, id, new state)``."""
    return [(t, i, s.name) for t, i, s in current_spool().reenqueue_zombies(message)]


def deleteRetiredTasks() -> list[tuple[str, str]]:
    """Delete FINISHED and FAILED tasks past their retention; return ``(type, id)`` of each."""
    return current_spool().delete_retired()
