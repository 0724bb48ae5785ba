"""spoolatp: EOxServer's Asynchronous Task Processing as a file-system spool queue."""

from spoolatp.errors import (
    ClaimLost,
    CorruptTaskFile,
    HandlerNotFound,
    PluginError,
    QueueEmpty,
    QueueException,
    QueueFull,
    ResponseNotFound,
    Retry,
    SpoolError,
    TaskExists,
    TaskNotFound,
    UnknownTaskType,
)
from spoolatp.format import Claim, LogRecord, StartedTask, State, TaskInfo, TaskType
from spoolatp.plugins import hookimpl
from spoolatp.spool import Spool

__all__ = [
    "Claim",
    "ClaimLost",
    "CorruptTaskFile",
    "HandlerNotFound",
    "LogRecord",
    "PluginError",
    "QueueEmpty",
    "QueueException",
    "QueueFull",
    "ResponseNotFound",
    "Retry",
    "Spool",
    "SpoolError",
    "StartedTask",
    "State",
    "TaskExists",
    "TaskInfo",
    "TaskNotFound",
    "TaskType",
    "UnknownTaskType",
    "hookimpl",
]
