"""The design floor: spoolatp's on-disk protocol with nothing else, to split its cost in two.

It makes exactly the file operations spoolatp's design needs per task and no
others: enqueue = symlink in ids/, mkdir in tmp/, write the task file, rename
the directory into enqueued/; claim = rename into scheduled/SERVER/, open the
task file, read it and append a journal line to it (spool format 2: the
journal follows the record in the task file); start = rename into
running/SERVER/, append; finish = append, rename into finished/. Durable mode
fsyncs each file written, as spoolatp's does. No validation, checksums,
pickling or re-reads.

floor -> design floor is the price of the layout (a directory and an id link
per task, a journal line per transition); design floor -> spoolatp is the
price of the implementation, which is what a fix can win back.

OneFileFloor is the same protocol on a one-file-per-task layout: the task is a
single file (a header giving the payload's length, the payload, then the
journal lines appended after it) renamed from state to state, so a task costs
two inodes (its id link and its file) instead of three (a directory besides).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import time
from typing import Any


class DesignFloor:
    def __init__(self, path: str, durable: bool = False, server: str = "s") -> None:
        self.path, self.durable, self.server = path, durable, server
        self._cache: list[str] = []
        self._seq = 0
        for sub in ("ids", "tmp", "enqueued", f"scheduled/{server}", f"running/{server}", "finished"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)

    def _write(self, path: str, data: bytes, flags: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o660)
        try:
            os.write(fd, data)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _register(self) -> str:
        """A new task's key, its id link made (the atomic uniqueness test)."""
        self._seq += 1
        tid = f"{os.getpid()}-{self._seq}"
        key = f"{time.time_ns():016x}~T~{tid}"
        os.symlink(key, os.path.join(self.path, "ids", f"T~{tid}"))
        return key

    def _take(self) -> str | None:
        """Rename the oldest enqueued task into scheduled/SERVER/; its key, or None when none is left."""
        while True:
            if not self._cache:
                self._cache = sorted(os.listdir(os.path.join(self.path, "enqueued")), reverse=True)
                if not self._cache:
                    return None
            key = self._cache.pop()
            try:
                os.rename(
                    os.path.join(self.path, "enqueued", key), os.path.join(self.path, "scheduled", self.server, key)
                )
                return key
            except FileNotFoundError:
                continue

    def enqueue(self, data: bytes) -> str:
        key = self._register()
        tmp = os.path.join(self.path, "tmp", f"enq~{key}")
        os.mkdir(tmp, 0o770)
        self._write(os.path.join(tmp, "task"), data, os.O_EXCL)
        os.rename(tmp, os.path.join(self.path, "enqueued", key))
        return key

    def claim(self) -> str | None:
        if (key := self._take()) is None:
            return None
        dest = os.path.join(self.path, "scheduled", self.server, key)
        fd = os.open(os.path.join(dest, "task"), os.O_RDWR | os.O_APPEND)
        try:
            os.read(fd, 65536)  # the record; the journal lines go after it
            os.write(fd, b'{"s":2}\n')
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return key

    def start(self, key: str) -> None:
        dest = os.path.join(self.path, "running", self.server, key)
        os.rename(os.path.join(self.path, "scheduled", self.server, key), dest)
        self._write(os.path.join(dest, "task"), b'{"s":3}\n', os.O_APPEND)

    def finish(self, key: str) -> None:
        src = os.path.join(self.path, "running", self.server, key)
        self._write(os.path.join(src, "task"), b'{"s":5}\n', os.O_APPEND)
        os.rename(src, os.path.join(self.path, "finished", key))


class OneFileFloor(DesignFloor):
    """The design floor with one file per task: header and payload, then the journal appended to the same file.

    enqueue = symlink in ids/, write tmp/KEY (O_EXCL), rename it into
    enqueued/; claim = rename into scheduled/SERVER/, open it read-write,
    read the task and append the first journal line through the same
    descriptor; start = rename into running/SERVER/, append; finish = append,
    rename into finished/.
    """

    def enqueue(self, data: bytes) -> str:
        key = self._register()
        tmp = os.path.join(self.path, "tmp", key)
        self._write(tmp, b"%08x\n" % len(data) + data, os.O_EXCL)  # the header holds the payload's length
        os.rename(tmp, os.path.join(self.path, "enqueued", key))
        return key

    def claim(self) -> str | None:
        if (key := self._take()) is None:
            return None
        fd = os.open(os.path.join(self.path, "scheduled", self.server, key), os.O_RDWR | os.O_APPEND)
        try:
            os.read(fd, 65536)  # the header and the payload; the journal lines go after them
            os.write(fd, b'{"s":2}\n')
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return key

    def start(self, key: str) -> None:
        dest = os.path.join(self.path, "running", self.server, key)
        os.rename(os.path.join(self.path, "scheduled", self.server, key), dest)
        self._write(dest, b'{"s":3}\n', os.O_APPEND)

    def finish(self, key: str) -> None:
        src = os.path.join(self.path, "running", self.server, key)
        self._write(src, b'{"s":5}\n', os.O_APPEND)
        os.rename(src, os.path.join(self.path, "finished", key))


def design_daemon(
    path: str, workers: int, n: int, stamps: str, durable: bool = False, layout: type[DesignFloor] = DesignFloor
) -> None:
    """spoolatp's daemon architecture on the design floor: ``workers`` processes that claim for themselves.

    Each worker claims, starts, stamps and finishes one task after another,
    recording each in memory it shares with the main process (a count before
    the task starts, one after it ends), as spoolatp's workers write their
    slot; it tells the main process over its pipe only that the queue is
    empty. No logging, no checks, no lock around the claims. ``layout`` is
    DesignFloor or OneFileFloor.
    """
    floor = layout(path, durable)
    for _ in range(n):
        floor.enqueue(b"x" * 200)
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    for _ in range(workers):
        parent, child = ctx.Pipe()
        slot = ctx.RawArray("q", 2)  # attempts begun, attempts ended
        lock = ctx.Lock()  # as spoolatp's Slot: each record whole for the reader
        proc = ctx.Process(target=_design_worker, args=(child, path, stamps, durable, layout, slot, lock), daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    while conns:
        for conn in multiprocessing.connection.wait(conns):
            if conn.recv() is None:  # that worker found the queue empty
                conns.remove(conn)
    for proc in procs:
        proc.join()


def _design_worker(
    conn: Any, path: str, stamps: str, durable: bool, layout: type[DesignFloor], slot: Any, lock: Any
) -> None:
    floor = layout(path, durable)
    while (key := floor.claim()) is not None:
        with lock:
            slot[0] += 1
        floor.start(key)
        line = f"{time.time():.6f}\n".encode()  # what bench.stamp does
        fd = os.open(stamps, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, line)
        os.close(fd)
        floor.finish(key)
        with lock:
            slot[1] += 1
    conn.send(None)
