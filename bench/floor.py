"""The floor: the least a rename-based spool can do per task, on the same directory.

enqueue  = write ``tmp/<name>`` then rename it into ``new/``;
claim    = rename ``new/<name>`` into ``cur/`` (the directory is listed once and
           the sorted list reused, as spoolatp's ``claim()`` does);
complete = rename ``cur/<name>`` into ``done/``.
Durable mode fsyncs the file before its first rename, as spoolatp's does.
No validation, no journal, no identifier registry: whatever spoolatp costs
beyond this is the price of its features.
"""

from __future__ import annotations

import os
import time


class FloorSpool:
    def __init__(self, path: str, durable: bool = False) -> None:
        self.path = path
        self.durable = durable
        self._cache: list[str] = []
        self._seq = 0
        for sub in ("tmp", "new", "cur", "done"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)

    def enqueue(self, data: bytes) -> str:
        return self.publish(self.prepare(data))

    def prepare(self, data: bytes) -> str:
        """Write the task under tmp/; :meth:`publish` makes it visible."""
        self._seq += 1
        name = f"{time.time_ns():016x}.{os.getpid()}.{self._seq}"
        tmp = os.path.join(self.path, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            os.write(fd, data)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def publish(self, name: str) -> str:
        os.rename(os.path.join(self.path, "tmp", name), os.path.join(self.path, "new", name))  # whole or not at all
        return name

    def claim(self) -> str | None:
        while True:
            if not self._cache:
                self._cache = sorted(os.listdir(os.path.join(self.path, "new")), reverse=True)
                if not self._cache:
                    return None
            name = self._cache.pop()
            try:
                os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name))
                return name  # of racing consumers one rename wins
            except FileNotFoundError:
                continue

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.path, "cur", name), "rb") as f:
            return f.read()

    def complete(self, name: str) -> None:
        os.rename(os.path.join(self.path, "cur", name), os.path.join(self.path, "done", name))
