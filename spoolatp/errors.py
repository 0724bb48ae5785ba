"""The whole exception tree of spoolatp.

::

    SpoolError                       base of everything spoolatp raises on purpose
    +-- QueueException               the ATP guide's base (tracker API)
    |   +-- QueueFull(..., OSError)  the spool holds its maximum of ENQUEUED tasks
    |   +-- QueueEmpty(..., LookupError)  no task to dequeue
    +-- TaskNotFound(..., LookupError)    no task with that type and id
    +-- ResponseNotFound(..., LookupError)  the task has stored no response
    +-- TaskExists(..., FileExistsError)    the (type, id) pair is taken
    +-- UnknownTaskType(..., LookupError)   no such task type is registered
    +-- ClaimLost(..., RuntimeError)        a consumer's claim was taken from it
    +-- CorruptTaskFile(..., ValueError)    a task file failed validation (or its signature)
    +-- TaskTooLarge(..., ValueError)       an input or response exceeds the spool's size limit
    +-- SigningKeyError(..., PermissionError)  this process's key does not fit the spool's signing
    +-- StorageError(..., OSError)          the spool's file system refused a write (full, read-only)
    +-- HandlerNotFound(..., LookupError)   no installed plugin offers a handler
    +-- PluginError(..., RuntimeError)      a plugin is broken (import, hooks, duplicates)
    +-- Retry                               raised by a handler: try this task again later

Identifier problems are plain :class:`ValueError`, as the ATP issue asks.
"""

from __future__ import annotations


class SpoolError(Exception):
    """Base class of every error spoolatp raises on purpose."""


class QueueException(SpoolError):
    """Base class of the ATP guide's queue exceptions."""


class QueueFull(QueueException, OSError):
    """The spool already holds its maximum number of ENQUEUED tasks."""

    def __init__(self, spool: object, limit: int) -> None:
        self.spool = spool
        self.limit = limit
        super().__init__(
            f"queue of the spool at {spool} is full ({limit} tasks ENQUEUED); "
            "retry later or raise the limit with Spool.configure(max_queue=...)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class QueueEmpty(QueueException, LookupError):
    """No task is waiting that this consumer may take."""


class TaskNotFound(SpoolError, LookupError):
    """No task with that type and id exists in the spool."""

    def __init__(self, type_id: str, task_id: str, spool: object) -> None:
        self.type_id, self.task_id, self.spool = type_id, task_id, spool
        super().__init__(f"task {type_id!r}/{task_id!r} not found in the spool at {spool}")

    def __str__(self) -> str:
        return str(self.args[0])


class ResponseNotFound(SpoolError, LookupError):
    """The task exists but its handler stored no response."""


class TaskExists(SpoolError, FileExistsError):
    """A task with that type and id already exists."""

    def __init__(self, type_id: str, task_id: str, spool: object) -> None:
        self.type_id, self.task_id, self.spool = type_id, task_id, spool
        super().__init__(
            f"task {type_id!r}/{task_id!r} already exists in the spool at {spool} (delete it first or use another id)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTaskType(SpoolError, LookupError):
    """The task type is not registered in the spool."""

    def __init__(self, type_id: str, spool: object) -> None:
        self.type_id, self.spool = type_id, spool
        super().__init__(
            f"task type {type_id!r} is not registered in the spool at {spool} "
            "(register it first with registerTaskType or `spoolatp register`)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ClaimLost(SpoolError, RuntimeError):
    """A consumer tried to change a task whose claim was taken from it.

    The task was re-enqueued as abandoned, deleted, or finished by someone
    else; the late change is refused and the task's current state is untouched.
    """


class CorruptTaskFile(SpoolError, ValueError):
    """A task file is truncated, garbage or of an unknown format."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"corrupt task file {path}: {reason}")

    def __str__(self) -> str:
        return str(self.args[0])


class TaskTooLarge(SpoolError, ValueError):
    """An input (pickled) or a response is larger than the spool allows; nothing was written."""

    def __init__(self, what: str, size: int, limit: int, setting: str, spool: object) -> None:
        self.what, self.size, self.limit, self.setting, self.spool = what, size, limit, setting, spool
        super().__init__(
            f"{what} is {_bytes(size)}, more than the {_bytes(limit)} the spool at {spool} accepts; "
            f"nothing was written (make it smaller, or raise the setting {setting} with "
            f"`spoolatp init --{setting.replace('_', '-')}` or Spool.configure({setting}=...))"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SigningKeyError(SpoolError, PermissionError):
    """This process has no key for a signed spool, a key of another spool, or an unusable key file.

    Raised before any task file is read, so a host with the wrong key never
    mistakes good tasks for forged ones (and never quarantines them).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class StorageError(SpoolError, OSError):
    """The spool's file system refused a write: full (ENOSPC, EDQUOT), read-only (EROFS), or I/O.

    Carries the ``errno`` of the cause; what was half done has been undone,
    so the operation can simply be retried once the cause is gone.
    """

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


class HandlerNotFound(SpoolError, LookupError):
    """No installed plugin offers a handler of that name on this host."""


class PluginError(SpoolError, RuntimeError):
    """A plugin failed to load, implements a hook wrongly, or clashes with another."""


class Retry(SpoolError):
    """Raised by a handler to ask for its task to be tried again later.

    The retry counts against the task type's ``retries``; once they are used
    up the task is FAILED with this exception's message. ``delay`` (seconds)
    overrides the type's backoff for this retry.
    """

    def __init__(self, reason: str = "", delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must not be negative, not {delay}")
        self.reason, self.delay = reason, delay
        super().__init__(reason or "the handler asked for a retry")
