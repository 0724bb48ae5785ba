"""The ATP developers' guide's SequenceSum handler, offered as handler ``sequence_sum``.

The guide's producer runs as written once the handler is given by its name::

    registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)
    enqueueTask("SequenceSum", "Task001", (1, 2, 3, 4, 5))

and the task's response is ``"15.0"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spoolatp import hookimpl

if TYPE_CHECKING:
    from spoolatp.plugins import Register
    from spoolatp.tracker import TaskStatus


def handler(taskStatus: TaskStatus, input: Any) -> None:
    """Sum a sequence of numbers and store the sum (as text) as the task's response.

    As in the guide, an item that is not a number fails the task but does not
    stop the loop: every bad item adds the failure message to the log, and the
    sum of the other items is still stored. (The guide catches ``ValueError``
    only, so ``float(None)`` would escape as a ``TypeError``; here every
    non-number is treated alike.)
    """
    total: float = 0  # an int until the first number, as in the guide (empty input gives "0")
    for val in input:
        try:
            total += float(val)
        except (TypeError, ValueError):
            taskStatus.setFailure("Input must be a sequence of numbers!")
    taskStatus.storeResponse(str(total))


@hookimpl
def spoolatp_register_handlers(register: Register) -> None:
    register("sequence_sum", handler)
