"""Handlers for tests and for trying out a deployment (distribution ``spoolatp-testing``).

Their names are stable; daemon tests depend on them.

==================  ==========================================  =====================================================
handler             input                                       what it does
==================  ==========================================  =====================================================
``testing.sleep``   seconds, or ``{"seconds": s, "steps": n}``  sleeps ``s`` seconds in ``n`` steps (default 1),
                                                                reporting progress after each step and logging;
                                                                stops after a step once the task is cancelled
``testing.raise``   anything                                    raises ``RuntimeError(str(input))``
``testing.exit``    an exit code (default 3)                    ``os._exit(input or 3)``: the worker dies at once
``testing.hang``    ignored                                     sleeps until killed
``testing.large``   a number of bytes (default 10 MiB)          stores a response of that many bytes
                                                                (``application/octet-stream``)
``testing.echo``    anything                                    stores the input as JSON (``application/json``),
                                                                or its ``repr`` (``text/plain``) if it is not JSON
``testing.marker``  ``{"path": p, "sleep": s}`` or ``p``        appends ``"<type>/<id> <pid>\\n"`` to file ``p``,
                                                                then sleeps ``s`` seconds (default 0)
``testing.flaky``   ``{"fail": n, "counter": p,``               fails its first ``n`` attempts (raising
                    ``"retry_delay": s}``                       ``Retry(delay=s)`` if ``retry_delay`` is given),
                                                                then succeeds; attempts are counted in file ``p``
==================  ==========================================  =====================================================

``testing.marker`` proves that each task runs exactly once: count the lines
per task. Each line is one ``write`` to a file opened with ``O_APPEND``, so
lines of concurrent workers on one host do not mix.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spoolatp import Retry, hookimpl

if TYPE_CHECKING:
    from spoolatp.plugins import Register
    from spoolatp.tracker import TaskStatus

#: the size of ``testing.large``'s response when the input gives none: 10 MiB
LARGE_DEFAULT = 10 * 1024 * 1024
#: the largest response ``testing.large`` agrees to build in memory
LARGE_MAX = 1024 * 1024 * 1024


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def sleep(taskStatus: TaskStatus, input: Any) -> None:
    """Sleep ``input`` seconds (or ``{"seconds": s, "steps": n}``), reporting progress after each step."""
    if isinstance(input, dict):
        unknown = set(input) - {"seconds", "steps"}
        if unknown:
            raise ValueError(f"testing.sleep takes 'seconds' and 'steps', not {sorted(map(str, unknown))}")
        seconds = _seconds(input.get("seconds", 0), "seconds")
        steps = input.get("steps", 1)
    else:
        seconds, steps = _seconds(input, "input of testing.sleep"), 1
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise ValueError(f"steps must be a whole number from 1 to 10000, not {steps!r}")
    taskStatus.log(f"sleeping {seconds:g} s in {steps} step(s)")
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        taskStatus.progress(step / steps, f"step {step} of {steps}")
        if taskStatus.cancelled():  # cooperative: stop at the next step once someone cancelled the task
            taskStatus.log(f"cancelled after step {step} of {steps}: stopping")
            return
    taskStatus.log(f"slept {seconds:g} s")


def raise_(taskStatus: TaskStatus, input: Any) -> None:
    """Raise ``RuntimeError`` with the input as its message."""
    raise RuntimeError(str(input))


def exit_(taskStatus: TaskStatus, input: Any) -> None:
    """End the process at once with exit code ``input or 3``, as a crashing handler would."""
    code = input or 3
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
        raise ValueError(f"input of testing.exit must be an exit code from 0 to 255, not {input!r}")
    os._exit(code)


def hang(taskStatus: TaskStatus, input: Any) -> None:
    """Sleep until the process is killed."""
    while True:
        time.sleep(3600)


def large(taskStatus: TaskStatus, input: Any) -> None:
    """Store a response of ``input`` bytes (default 10 MiB): the bytes 0..255, repeated."""
    size = LARGE_DEFAULT if input is None else input
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= LARGE_MAX:
        raise ValueError(f"input of testing.large must be a number of bytes from 0 to {LARGE_MAX}, not {input!r}")
    pattern = bytes(range(256))
    taskStatus.storeResponse((pattern * (size // 256 + 1))[:size], "application/octet-stream")


def echo(taskStatus: TaskStatus, input: Any) -> None:
    """Store the input as the response: JSON if it can be, else its ``repr`` as plain text."""
    try:
        text = json.dumps(input, allow_nan=False)
    except (TypeError, ValueError):
        taskStatus.storeResponse(repr(input), "text/plain")
    else:
        taskStatus.storeResponse(text, "application/json")


def marker(taskStatus: TaskStatus, input: Any) -> None:
    """Append ``"<type>/<id> <pid>\\n"`` to the file ``input["path"]`` (or ``input``), then sleep ``input["sleep"]``."""
    if isinstance(input, dict):
        unknown = set(input) - {"path", "sleep"}
        if unknown:
            raise ValueError(f"testing.marker takes 'path' and 'sleep', not {sorted(map(str, unknown))}")
        path, pause = input.get("path"), _seconds(input.get("sleep", 0), "sleep")
    else:
        path, pause = input, 0.0
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"testing.marker needs a file path as input or input['path'], not {path!r}")
    line = f"{taskStatus.handle.type_id}/{taskStatus.handle.task_id} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: concurrent lines never interleave
    finally:
        os.close(fd)
    time.sleep(pause)


def flaky(taskStatus: TaskStatus, input: Any) -> None:
    """Fail the first ``fail`` attempts, then succeed.

    Input ``{"fail": n, "counter": path, "retry_delay": s}``: attempts are
    counted in the local file ``counter``; a failing attempt raises
    RuntimeError, or ``spoolatp.Retry(delay=s)`` when ``retry_delay`` is given.
    """
    if not isinstance(input, dict) or not isinstance(input.get("counter"), str):
        raise ValueError("testing.flaky takes {'fail': n, 'counter': path, 'retry_delay': seconds or absent}")
    counter = Path(input["counter"])
    with open(counter, "a+") as f:
        f.write("x")
    attempt = len(counter.read_text())
    if attempt <= int(input.get("fail", 1)):
        if input.get("retry_delay") is not None:
            raise Retry(f"attempt {attempt} asks for a retry", delay=float(input["retry_delay"]))
        raise RuntimeError(f"flaky failure on attempt {attempt}")
    taskStatus.storeResponse(f"ok on attempt {attempt}", "text/plain")


@hookimpl
def spoolatp_register_handlers(register: Register) -> None:
    register("testing.sleep", sleep)
    register("testing.raise", raise_)
    register("testing.exit", exit_)
    register("testing.hang", hang)
    register("testing.large", large)
    register("testing.echo", echo)
    register("testing.marker", marker)
    register("testing.flaky", flaky)
