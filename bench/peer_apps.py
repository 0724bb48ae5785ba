"""The peers' task functions, importable by their consumers (huey_consumer, rq worker).

The huey instance is built from environment variables set by peers.py:
``BENCH_HUEY_KIND`` (``file`` or ``sqlite``), ``BENCH_HUEY_PATH`` and
``BENCH_HUEY_FSYNC``. Every peer's task does what spoolatp's ``bench.stamp``
handler does: one O_APPEND write of the time its handler started.
"""

from __future__ import annotations

import os
import time


def stamp(path: str) -> None:
    line = f"{time.time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def noop() -> None:
    return None


def make_huey(kind: str, path: str, fsync: bool = False):  # type: ignore[no-untyped-def]
    from huey import FileHuey, SqliteHuey

    if kind == "file":
        return FileHuey("bench", path=path, results=False)
    return SqliteHuey("bench", filename=path, results=False, fsync=fsync)


huey = None
if os.environ.get("BENCH_HUEY_KIND"):
    huey = make_huey(
        os.environ["BENCH_HUEY_KIND"], os.environ["BENCH_HUEY_PATH"], bool(os.environ.get("BENCH_HUEY_FSYNC"))
    )
    huey_stamp = huey.task()(stamp)
    huey_noop = huey.task()(noop)
