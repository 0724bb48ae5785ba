"""Handlers for the benchmarks, offered to daemons started with this folder on PYTHONPATH.

The ``*.dist-info`` folder beside this module declares the entry point, so
importlib finds the plugin without installing anything.

``bench.noop``   does nothing: end-to-end figures measure the queue alone.
``bench.stamp``  input ``path`` or ``(path, label)``: appends ``"<time.time()>\\n"``
                 (or ``"<label> <time.time()>\\n"``) to ``path`` in one O_APPEND
                 write the moment the handler starts: the end-to-end and
                 wake-up figures read these stamps, and the peers' tasks do the same.
"""

from __future__ import annotations

import os
import time
from typing import Any

from spoolatp import hookimpl


def noop(taskStatus: Any, input: Any) -> None:
    return None


def stamp(taskStatus: Any, input: Any) -> None:
    now = time.time()
    path, label = (input, "") if isinstance(input, str) else input
    line = f"{label} {now:.6f}\n" if label else f"{now:.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@hookimpl
def spoolatp_register_handlers(register: Any) -> None:
    register("bench.noop", noop)
    register("bench.stamp", stamp)
