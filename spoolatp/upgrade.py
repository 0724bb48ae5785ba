"""``spoolatp upgrade``: convert a spool from layout format 1 to format 2, in place.

Format 1 keeps a task's journal lines in a file ``journal`` beside its ``task`` file; format 2 appends
them to the ``task`` file itself, right after the sealed record, so a claimed task costs one file, not
two. The sealed part (header line and payload) is the same bytes in both formats, so its checksum or
signature still verifies.

Each task directory that holds a ``journal`` is converted on its own: ``sealed record + journal`` is
written under a private name in the directory and renamed over ``task``, then ``journal`` is removed.
While ``journal`` exists it is the truth (format 1 reads nothing else), so writing that file again is
always right: a run killed anywhere and run again ends with the same bytes. ``spool.json`` says
``"format": 2`` only once every directory is converted, and a spool in format 2 is left alone.

Only the command imports this module; the spool itself never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

from spoolatp import fsio
from spoolatp.errors import SpoolError
from spoolatp.format import SPOOL_FORMAT, STATE_DIRS, TASK_MAGIC, journal_offset
from spoolatp.spool import Spool

#: the private name a converted task file is written under, in its own task directory (hidden: never listed)
TMP_NAME = ".task~upgrade"
#: entries of tmp/ that are task directories parked by an operation that was under way (see spool.py)
TMP_TASK_PREFIXES = ("reap~", "cancel~", "rerun~", "del~", "enq~")
#: where task directories live, in the order they are converted: the state directories, then tmp/
PLACES = (*STATE_DIRS, "tmp")
#: a journal that grows this many times while it is being converted is left for a later run
GROWTH_TRIES = 5


@dataclasses.dataclass
class UpgradeReport:
    """What one :func:`upgrade` did."""

    #: the spool's directory
    spool: str
    #: its layout format before and after the run (equal when there was nothing to do)
    before: int
    after: int
    #: task directories converted, per place (a state directory's name, or ``tmp``)
    converted: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PLACES, 0))
    #: task directories without a journal: the same in both formats
    unchanged: int = 0
    #: ``(path under the spool, reason)`` of each entry left as it was: damaged tasks, which the daemons quarantine
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: daemons whose heartbeat looked alive, upgraded past with ``force`` (``server on host``)
    forced: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        """How many task directories were converted."""
        return sum(self.converted.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "spool": self.spool,
            "format_before": self.before,
            "format_after": self.after,
            "converted": dict(self.converted),
            "total": self.total,
            "unchanged": self.unchanged,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "forced_past": list(self.forced),
        }


class _Skip(Exception):
    """A task directory left as it is, and why."""


def spool_format(spool: Spool) -> int:
    """The layout format ``spool.json`` states (1 when it states none).

    Read directly, not through :meth:`Spool.settings`, to say what to do about a format this
    spoolatp does not know.

    :raises SpoolError: the format is not 1 or 2.
    """
    settings = json.loads(fsio.read_file(spool.path / "spool.json", follow=True))
    layout = settings.get("format", 1) if isinstance(settings, dict) else None
    if type(layout) is not int or not 1 <= layout <= SPOOL_FORMAT:
        raise SpoolError(
            f"the spool at {spool} has format {layout!r}, which this spoolatp (format {SPOOL_FORMAT}) cannot "
            "upgrade; install a newer spoolatp, one that knows that format, and use it on this spool"
        )
    return layout


def live_daemons(spool: Spool, dead_after: float = 60.0) -> list[dict[str, Any]]:
    """The heartbeats of daemons that may still work on ``spool``: not stopped, seen ``dead_after`` s ago or less."""
    now = spool.clock()
    return [
        beat
        for beat in spool.daemons()
        if beat.get("state") != "stopped" and now - float(beat.get("seen", 0.0)) <= dead_after
    ]


def upgrade(spool: Spool, *, force: bool = False, dead_after: float = 60.0) -> UpgradeReport:
    """Convert ``spool`` to layout format 2; do nothing if it is in format 2 already.

    Safe to run again after a crash or an interruption at any point: it then finishes the job.

    :param force: convert even while daemons' heartbeats are fresh (they are dead, but were killed
        less than ``dead_after`` seconds ago). A daemon that really runs loses journal lines.
    :param dead_after: a daemon whose heartbeat is older than this counts as dead (the daemon's default).
    :raises SpoolError: the spool has a format this spoolatp does not know, or daemons run (without ``force``).
    :raises OSError: a file could not be written (the file system is full or read-only): run it again
        once that is fixed.
    """
    spool._upgrading = True  # this process may read the settings of a spool marked as being upgraded
    before = spool_format(spool)
    report = UpgradeReport(str(spool.path), before, before)
    if before == SPOOL_FORMAT:
        return report
    live = [f"{beat.get('server', '?')} on {beat.get('host', '?')}" for beat in live_daemons(spool, dead_after)]
    if live and not force:
        raise SpoolError(
            f"daemons still work on the spool at {spool}: {', '.join(live)}; stop them first (on every host), "
            f"or pass --force if they are really dead (a killed daemon looks alive for {dead_after:g} s after "
            "its last heartbeat); nothing was changed"
        )
    report.forced = live
    local = spool.local
    settings = dict(spool.settings())
    if settings.get("upgrading") != SPOOL_FORMAT:
        # first: every spoolatp from now on refuses the spool until it is converted (one that took a converted
        # task file for a format-1 one would count no attempt in it, and write a journal file beside it)
        spool._write_json(spool.path / "spool.json", {**settings, "upgrading": SPOOL_FORMAT})
        spool._settings = None
    for place, name, directory in _task_dirs(spool, report):
        try:
            # fsynced whatever the spool's setting: the journal file is removed once the new task file is written
            if _convert(directory, durable=True, local=local):
                report.converted[place] += 1
            else:
                report.unchanged += 1
        except _Skip as skip:
            report.skipped.append((name, str(skip)))
        except OSError as exc:
            # the spool stays marked as being upgraded: nothing uses it until a run completes
            raise SpoolError(
                f"upgrade of the spool at {spool} stopped at {name}: {exc}; the spool is half converted: fix "
                "that and run `spoolatp upgrade` again (as the spool's owner) before any daemon starts"
            ) from exc
    # last: a spool that says format 2 has no journal file left, but for the damaged tasks skipped above
    os.sync()  # every converted task file and removal is on disk before the spool says format 2
    spool._settings = None  # the settings cache may be up to a second old
    settings = {k: v for k, v in spool.settings().items() if k != "upgrading"}
    settings["format"] = SPOOL_FORMAT
    spool._write_json(spool.path / "spool.json", settings)
    spool._settings = None
    os.sync()
    report.after = SPOOL_FORMAT
    return report


def _task_dirs(spool: Spool, report: UpgradeReport) -> Iterator[tuple[str, str, str]]:
    """``(place, path under the spool, path)`` of every task directory, in :data:`PLACES` order.

    An entry where a task directory belongs that is no directory itself (a file, or a symbolic link:
    never followed) goes to ``report.skipped``.
    """
    root = os.fspath(spool.path)
    for place in PLACES:
        if place in ("scheduled", "running"):
            parents = []
            for server in sorted(fsio.listdir(f"{root}/{place}")):
                if fsio.real_dir(f"{root}/{place}/{server}"):
                    parents.append(f"{place}/{server}")
                else:
                    report.skipped.append((f"{place}/{server}", _NOT_A_DIR))
        else:
            parents = [place]
        for parent in parents:
            for entry in sorted(fsio.listdir(f"{root}/{parent}")):
                if place == "tmp" and not entry.startswith(TMP_TASK_PREFIXES):
                    continue  # set~ and clock~ files: not tasks
                name = f"{parent}/{entry}"
                if fsio.real_dir(f"{root}/{name}"):
                    yield place, name, f"{root}/{name}"
                else:
                    report.skipped.append((name, _NOT_A_DIR))


_LEFT = "left as it is, the daemons quarantine it"
_NOT_A_DIR = f"not a directory but a file or a symbolic link (not followed); {_LEFT}"


def _convert(directory: str, *, durable: bool, local: bool) -> bool:
    """Move the journal of task directory ``directory`` into its task file; False if it has no journal.

    :raises _Skip: the task file or the journal is damaged or not a file, or the directory moved away.
    """
    journal_path, task_path, tmp_path = f"{directory}/journal", f"{directory}/task", f"{directory}/{TMP_NAME}"
    for _ in range(GROWTH_TRIES):
        try:
            st = os.lstat(journal_path)
        except FileNotFoundError:
            return False  # never claimed: a task file alone is the same in both formats
        if not stat.S_ISREG(st.st_mode):
            raise _Skip(f"its journal is not a file but {fsio.kind(st.st_mode)}")
        sealed, old = _sealed(task_path, local)
        journal = _read(journal_path, local, "journal")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)  # left by a run that died before its rename: written again below
        _write(directory, sealed + journal, old=old, mtime_ns=st.st_mtime_ns, durable=durable)
        # rename(2) swaps the whole file: readers see the old task file or the new one, whose sealed part is
        # the same bytes; `journal`, still there, stays the truth until it is unlinked below (a rerun repeats this)
        if not fsio.move(tmp_path, task_path, proof="src"):
            raise _Skip("moved away during the upgrade (does a process still work on the spool?)")
        if durable:
            fsio.fsync_dir(directory)  # the new task file is on disk before the journal is removed
        try:
            if os.lstat(journal_path).st_size != len(journal):
                continue  # a process still in format 1 appended meanwhile: take its line too
            os.unlink(journal_path)
        except FileNotFoundError:
            raise _Skip("moved away during the upgrade (does a process still work on the spool?)") from None
        if durable:
            fsio.fsync_dir(directory)
        return True
    raise SpoolError(
        f"the journal of {directory} grew {GROWTH_TRIES} times while it was converted: a process still writes "
        "to the spool; stop it (every daemon, sweep and web --allow-actions, on every host) and run again"
    )


def _sealed(task_path: str, local: bool) -> tuple[bytes, os.stat_result]:
    """The sealed part of a task file (header line and payload, no journal lines) and the file's status."""
    data = _read(task_path, local, "task file")
    old = os.lstat(task_path)
    if not stat.S_ISREG(old.st_mode):  # a FIFO planted there, read as empty (fsio.read_file)
        raise _Skip(f"its task file is not a file but {fsio.kind(old.st_mode)}; {_LEFT}")
    header_end = data.find(b"\n") + 1
    if not data.startswith(TASK_MAGIC + b" ") or header_end == 0:
        raise _Skip(f"its task file has no SPOOLATP-TASK header line; {_LEFT}")
    try:
        off = journal_offset(data)
    except ValueError as exc:
        raise _Skip(f"the header of its task file does not parse ({exc}); {_LEFT}") from None
    if off > len(data):
        raise _Skip(f"its task file is shorter than its header says (truncated); {_LEFT}")
    return data[:off], old


def _read(path: str, local: bool, what: str) -> bytes:
    """The bytes of ``path``; :raises _Skip: missing, a link, a directory or a busy FIFO; :raises OSError: else."""
    try:
        return fsio.read_file(path, local=local)  # O_NOFOLLOW: a link planted here is not read through
    except FileNotFoundError:
        raise _Skip(f"it has no {what}; {_LEFT}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Skip(f"its {what} is a symbolic link (not followed); {_LEFT}") from None
        if exc.errno == errno.EISDIR:
            raise _Skip(f"its {what} is a directory; {_LEFT}") from None
        if exc.errno == errno.EAGAIN:  # a FIFO a writer holds open (fsio.read_file): no rerun would convert it
            raise _Skip(f"its {what} is not a file (a FIFO?); {_LEFT}") from None
        raise  # not readable by this user, an I/O error: nothing is skipped that a rerun could convert


def _write(directory: str, data: bytes, *, old: os.stat_result, mtime_ns: int, durable: bool) -> None:
    """Create ``directory/TMP_NAME`` holding ``data``, with the old task file's owner, group and mode, and the
    journal's mtime (a daemon of the spool's group must read it as it read the old one).

    The mtime is the time of the last journal line, by which format 2 judges a finished task's retention
    (format 1 took the journal's). A failed write leaves no file behind.
    """
    try:
        # O_EXCL, in the directory opened O_NOFOLLOW: a link planted in either place is never written through
        fd = fsio.open_in(directory, TMP_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileNotFoundError:
        raise _Skip("moved away during the upgrade (does a process still work on the spool?)") from None
    except OSError as exc:
        fsio.reraise(exc, f"cannot create {directory}/{TMP_NAME}")
    try:
        fsio.write_all(fd, data)
        if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.fchown(fd, old.st_uid, old.st_gid)  # PermissionError: not the spool's owner (the run stops)
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        if durable:
            os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(f"{directory}/{TMP_NAME}")
        fsio.reraise(exc, f"cannot write {directory}/{TMP_NAME}")
    finally:
        os.close(fd)
