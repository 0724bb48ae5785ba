"""The ATP daemon: observer -> wake-up -> worker pool -> sweep, until told to stop.

One main process and ``workers`` worker processes. Each worker claims its
own tasks and runs the guide's consumer body (claim, start, handler, finish)
one task after another until the queue is empty, so no task waits for the
main process. Before a task's handler runs, its worker records which attempt
it holds, since when and its timeout in its slot (memory shared with the
main process, :class:`spoolatp.workers.Slot`), and after the end is recorded
that it ended; the worker logs how. A task costs the main process nothing:
it reads the slots when it judges timeouts and cancels (at least four times a
second while a worker is busy), when a worker dies, and for its heartbeat.
So the main process knows which attempt runs where and since when, and kills
a worker whose attempt ran past its type's timeout before it gives the task
back: a re-enqueue never overlaps a still-running attempt of this daemon. A
handler that crashes, leaks or calls ``os._exit`` takes down only its
worker, which is replaced. A worker killed between its claim and the record
in its slot leaves a task the main process does not know about: the main
process gives back whatever this server id still holds when it stops, and
any daemon's sweep takes it back once its timeout passed.

This module is the main process; what runs in a worker process (its loop,
the lease it checks, the claim lock it takes) is in :mod:`spoolatp.workers`.

The main process watches and wakes: when the queue was empty, idle workers
wait for its "go", sent to one worker at a time (a worker that finds a task
wakes the next), so an idle daemon lists the queue once per wake-up.

Wake-up: a watchdog observer on ``enqueued/`` and ``drop/`` only writes a
byte to a pipe the main loop waits on (no task runs on the observer thread).
A rescan backs it up, because inotify can drop events and sees nothing
another host does; on a network file system the daemon polls instead. On
inotify the rescan comes with the heartbeat and wakes a worker only when
``enqueued/`` changed since the last look, so an idle daemon wakes once per
heartbeat and lists nothing but ``delayed/``; see :meth:`Daemon._loop`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import select
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from filelock import FileLock, Timeout
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from spoolatp import dropin, fsio, plugins
from spoolatp.errors import ClaimLost, SpoolError
from spoolatp.format import KEY_ENV, SPOOL_DIRS, Claim, validate_id
from spoolatp.spool import Spool
from spoolatp.workers import ClaimLock, Lease, Pending, Slot, give_back, host_lock_path, worker_main

log = logging.getLogger(__name__)

#: file systems on which inotify sees nothing that other hosts do
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "fuse.sshfs",
    "9p",
    "lustre",
}


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def mount_advice(kind: str, options: list[str]) -> list[str]:
    """What is wrong with a network mount for a spool, as far as /proc/mounts shows."""
    opts = dict(o.partition("=")[::2] for o in options)
    advice = []
    if kind.startswith("nfs"):
        if "soft" in opts:
            advice.append("mounted 'soft': a timed-out operation can fail half-done; mount 'hard'")
        if opts.get("lookupcache", "all") == "all":
            advice.append("lookupcache=all hides new tasks; mount with lookupcache=positive (or none)")
        for key in ("acdirmax", "acregmax", "actimeo"):
            if key in opts and opts[key].isdigit() and int(opts[key]) > 3:
                advice.append(f"{key}={opts[key]} delays what other hosts see; use actimeo=1 or less")
    elif kind == "fuse.sshfs":
        advice.append(
            "sshfs caches directories for 20 s by default; make sure it is mounted with "
            "-o dir_cache=no,entry_timeout=0,attr_timeout=0,negative_timeout=0,reconnect"
        )
    return advice


def trust_warnings(spool: Spool) -> list[str]:
    """What makes the spool easier to subvert than it should be: one line each.

    An unsigned spool (its pickles are trusted); the spool, its directories,
    ``spool.json`` or a task type writable by others (anyone could plant a
    task or change what a type runs); a parent directory writable by others
    without the sticky bit (anyone could replace the spool). ``drop/`` is
    exempt: opening it to others is a documented choice (docs/security.md).
    """
    out = []
    if not spool.check_key():
        out.append(
            f"spool {spool.path} is not signed: every task file in it is trusted, so whoever can write to it "
            "can run code as the user its daemons run as; give it a key "
            f"(`spoolatp init --key-file`, {KEY_ENV}; docs/security.md)"
        )
    paths = [spool.path, spool.path / "spool.json"]
    paths += [spool.path / name for name in SPOOL_DIRS]
    paths += sorted((spool.path / "types").glob("*.json"))
    for path in paths:
        with contextlib.suppress(OSError):
            mode = os.lstat(path).st_mode
            if mode & stat.S_IWOTH:
                out.append(
                    f"{path} is writable by others (mode {stat.S_IMODE(mode):04o}): anyone on this host "
                    f"can plant or change what the daemon runs; run `chmod o-w {path}`"
                )
    parent = spool.path.absolute().parent
    while True:
        with contextlib.suppress(OSError):
            mode = os.stat(parent).st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                out.append(f"{parent} is writable by others without the sticky bit: anyone can replace the spool")
        if parent.parent == parent:
            break
        parent = parent.parent
    return out


#: the share of ``dead_after`` a heartbeat's lease lasts: other hosts wait all of it, from the file's mtime
LEASE_SHARE = 0.6

#: the share of the shortest ``timeret`` by which a sweep may delete a retired task late: ended tasks are
#: listed (and each stat-ed) at most once per this share of it, not on every sweep
RETIRE_SLACK = 0.1


# --------------------------------------------------------------------------- workers


@dataclass
class _Worker:
    process: BaseProcess
    conn: multiprocessing.connection.Connection
    slot: Slot
    claim: Claim | None = None  # the attempt it runs, as its slot said when last read (None: none)
    seen: int = 0  # the slot's count of attempts when last read
    epoch: float = 0.0  # the lease's epoch when it claimed (see Lease)
    idle: bool = False  # it found nothing to run and waits for "go"
    looking: bool = True  # started, or told "go", and not answered yet ("hold" or "idle")
    started: float = 0.0
    deadline: float = float("inf")
    cancel_by: str | None = None  # who asked to cancel the running task
    kill_at: float = float("inf")  # when a cancelled task that did not stop is killed

    def __post_init__(self) -> None:
        self.pending = Pending(self.conn)
        # both descriptors, looked up once: the main loop polls them at every wake-up
        self.fds = (self.conn.fileno(), self.process.sentinel)

    def refresh(self, root: str, server: str) -> int:
        """Read its slot: :attr:`claim` becomes the attempt it runs now; return how many it began since last read.

        An unreadable slot (a worker killed while it wrote it) leaves what was known.
        """
        view = self.slot.read()
        if view is None:
            return 0
        new = view.holds - self.seen
        if new:
            self.seen = view.holds
            self.claim = Claim(root, server, view.key, view.attempt)
            self.epoch, self.started, self.deadline = view.epoch, view.started, view.started + view.timeout
            self.cancel_by, self.kill_at = None, float("inf")
        if not view.running and self.claim is not None:
            self.claim, self.deadline = None, float("inf")
            self.cancel_by, self.kill_at = None, float("inf")
        return new


# --------------------------------------------------------------------------- observer


def _shallow_scandir(path: str | None) -> Iterator[os.DirEntry[str]]:
    """What the polling observer sees of ``enqueued/``: nothing but the directory itself.

    Polling a directory of 100,000 tasks by listing and stat-ing each one
    would cost the file server that much every poll, on every host. A task
    arriving or leaving changes the directory's mtime, so one ``stat`` per
    poll is enough to ring the doorbell; the claim lists the queue itself.
    """
    if path is None or os.path.basename(path) == "enqueued":
        return iter(())
    return os.scandir(path)


def _make_observer(poll: float | None) -> BaseObserver:
    if poll is not None:
        return PollingObserverVFS(os.stat, _shallow_scandir, polling_interval=poll)
    try:
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
        from watchdog.observers.inotify_c import InotifyConstants, InotifyFD, Mask
    except ImportError:  # not Linux: watchdog's platform default, delays and all
        from watchdog.observers import Observer

        return Observer()

    class ArrivalEmitter(InotifyEmitter):
        """Ask inotify for arrivals only.

        watchdog holds every IN_MOVED_FROM for half a second to pair it with an
        IN_MOVED_TO, and its queue delivers nothing behind a held event. Each
        claim moves a task *out* of enqueued/, so a naive watch delays the next
        arrival by up to 0.5 s. Arrivals are IN_MOVED_TO and IN_CREATE; leaving
        IN_MOVED_FROM out of the mask keeps the queue free.
        """

        def get_event_mask_from_filter(self) -> Mask:
            c = InotifyConstants
            return Mask(c.IN_MOVED_TO | c.IN_CREATE | c.IN_CLOSE_WRITE | c.IN_DELETE_SELF)

    class ArrivalObserver(InotifyObserver):
        def __init__(self) -> None:
            self._inotify_fd = InotifyFD()
            self._inotify_fd.start()
            BaseObserver.__init__(self, ArrivalEmitter, inotify_fd=self._inotify_fd)

    return ArrivalObserver()


class _Doorbell(FileSystemEventHandler):
    """Turns file-system events into a call of ``ring`` (which writes one byte to a pipe).

    With ``root``, events on names starting with "." (a producer's temporary
    name, an ingest in progress) and under ``rejected/`` are ignored, so the
    daemon's own ingest renames do not ring again.
    """

    def __init__(self, ring: Callable[[], None], root: str | None = None) -> None:
        self.ring = ring
        self.root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.root is not None:
            path = os.fsdecode(event.dest_path or event.src_path)
            parts = os.path.relpath(path, self.root).split(os.sep)
            if any(p.startswith(".") for p in parts) or parts[0] == "rejected":
                return
        self.ring()


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """Runs tasks of a spool in worker processes until stopped.

    :param poll: poll the file system every ``poll`` seconds instead of inotify
        (chosen automatically on a network file system).
    :param grace: seconds running tasks get to finish after SIGTERM/SIGINT.
    :param sweep_interval: mean seconds between maintenance sweeps (jittered).
    :param heartbeat: seconds between heartbeats in ``daemons/``.
    :param dead_after: a daemon whose heartbeat is older than this is presumed
        dead and its tasks are re-enqueued by a sweep.
    :param rescan: seconds between rescans of the queue that back up inotify (default: with every
        heartbeat; polling, on a network file system, every second).
    :param cancel_grace: seconds a handler gets to stop after its task was cancelled.
    :param burst: drain the queue and return instead of waiting for more.
    """

    def __init__(
        self,
        spool: Spool | str | os.PathLike[str],
        *,
        server_id: str | None = None,
        workers: int | None = None,
        max_tasks_per_worker: int | None = None,
        poll: float | None = None,
        grace: float = 30.0,
        sweep_interval: float = 30.0,
        heartbeat: float = 5.0,
        dead_after: float = 60.0,
        rescan: float | None = None,
        cancel_grace: float = 10.0,
        burst: bool = False,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        path = spool.path if isinstance(spool, Spool) else Path(spool)
        if key_file is None and isinstance(spool, Spool):
            key_file = spool.key_file
        self.spool = Spool(path, on_event=plugins.notify, key_file=key_file)
        self.server_id = validate_id(server_id or default_server_id(), "server id")
        self.workers = workers if workers is not None else os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be at least 1, not {max_tasks_per_worker}")
        self._key_file = None if self.spool.key_file is None else str(self.spool.key_file)
        for name, value in (
            ("grace", grace),
            ("sweep_interval", sweep_interval),
            ("heartbeat", heartbeat),
            ("rescan", 1.0 if rescan is None else rescan),
        ):
            if value < 0 or (name != "grace" and value == 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if poll is not None and poll <= 0:
            raise ValueError(f"poll must be a positive number of seconds, not {poll}")
        if heartbeat >= (1 - LEASE_SHARE) * dead_after:
            raise ValueError(
                f"heartbeat ({heartbeat:g} s) must be shorter than {1 - LEASE_SHARE:g} x dead_after "
                f"({dead_after:g} s): the workers' lease lasts {LEASE_SHARE:g} x dead_after from each heartbeat; "
                "write heartbeats more often, or let other daemons wait longer before they presume this one dead"
            )
        self.max_tasks_per_worker = max_tasks_per_worker
        self.poll, self.grace, self.sweep_interval = poll, grace, sweep_interval
        self.heartbeat, self.dead_after, self.rescan, self.burst = heartbeat, dead_after, rescan, burst
        self.cancel_grace = cancel_grace
        self._next_due: float | None = None  # when the next delayed task is due (spool clock)
        self._delayed_changed = True
        self.log = logging.LoggerAdapter(log, {"server": self.server_id})
        self._root = os.fspath(self.spool.path)  # as a Claim names its spool
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool: list[_Worker] = []
        self._stop = 0
        self._poller, self._polled = select.poll(), list[int]()  # see _wait
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._drop_due = False
        self._reported: set[str] = set()
        self._holds = 0  # attempts the workers recorded, as their slots were read
        self._told_holds, self._told_at = 0, Lease.now()  # _holds and the time at the last heartbeat
        self._lease = self._ctx.RawArray("d", 3)  # see Lease
        self._rewake = False  # an arrival rang while a worker was looking: wake one again when it answers
        self._wake_due = False  # a worker found work (see _collect): wake an idle sibling
        self._arrived = False  # the wake-up pipe rang (an arrival, a signal) since the last _wake_one
        self._started = time.time()
        self._host = socket.gethostname()  # for the heartbeat: an idle daemon's every system call counts
        self._scanned_mtime: int | None = None  # enqueued/'s mtime at the last rescan that woke a worker
        self._claim_failed = False  # a worker could not claim (it waits for the next rescan to try again)
        self._retire_keeps: dict[str, float] = {}  # timeret by type at the last listing of the ended tasks
        self._retire_at = 0.0  # when (spool clock) the ended tasks are worth listing again

    def _info(self, msg: str, *args: Any) -> None:
        self.log.info("[%s] " + msg, self.server_id, *args)

    def _warn(self, msg: str, *args: Any) -> None:
        self.log.warning("[%s] " + msg, self.server_id, *args)

    # ------------------------------------------------------------------ control

    def ring(self) -> None:
        """Wake the main loop (safe from any thread and from signal handlers)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _delayed_arrived(self) -> None:
        self._delayed_changed = True
        self.ring()

    def _drop_arrived(self) -> None:
        self._drop_due = True
        self.ring()

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming and finish (``now``: kill running tasks and give them back)."""
        self._stop = max(self._stop, 2 if now else 1)
        self.ring()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop += 1  # the first signal drains, a second one stops at once
        self.ring()

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Serve the spool until stopped (or, in burst mode, until the queue is empty); return 0.

        :raises SigningKeyError: this host's key does not fit the spool (checked before anything runs).
        :raises SpoolError: another daemon with this server id serves the spool on this host.
        """
        # one daemon per server id and spool on this host: a second one would take back the first one's tasks
        # as "left by an earlier run"; filelock's flock is released when this process dies, even by kill -9
        singleton = FileLock(host_lock_path(self.spool, self.server_id, "daemon"), timeout=0)
        try:
            singleton.acquire()
        except Timeout:
            raise SpoolError(
                f"another daemon with server id {self.server_id!r} already serves {self.spool.path} on this "
                "host; stop it, or give this one another --server-id"
            ) from None
        try:
            return self._serve()
        finally:
            singleton.release()

    def _serve(self) -> int:
        spool = self.spool
        for warning in trust_warnings(spool):  # check_key() in there refuses a key that does not fit
            self._warn("%s", warning)
        if spool.journal_file == "journal":
            self._info(
                "spool %s is in format 1 (a journal file per claimed task): `spoolatp upgrade`, with every daemon "
                "stopped, saves a file creation per task (docs/format.md)",
                spool.path,
            )
        fs, options = fsio.filesystem_of(spool.path)
        poll = self.poll
        if fs in NETWORK_FS:
            poll = poll or min(self.rescan or 1.0, 1.0)
            self._warn(
                "spool %s is on a network file system (%s): inotify sees nothing other hosts do; polling every %g s",
                spool.path,
                fs,
                poll,
            )
            for advice in mount_advice(fs, options):
                # sshfs hides its options from /proc/mounts: there it is a reminder, not a finding
                (self._info if fs == "fuse.sshfs" else self._warn)("mount of %s: %s", spool.path, advice)
        spool.clock()  # measures this host's offset from the spool's clock, and warns if it is large
        self._info(
            "serving spool %s (%s) with %d workers%s",
            spool.path,
            fs or "unknown fs",
            self.workers,
            " in burst mode" if self.burst else "",
        )
        multiprocessing.set_forkserver_preload(["spoolatp.workers", "spoolatp.tracker", "spoolatp.plugins"])
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        observer = _make_observer(poll)
        observer.schedule(_Doorbell(self.ring), str(spool.path / "enqueued"), recursive=False)
        observer.schedule(_Doorbell(self._delayed_arrived), str(spool.path / "delayed"), recursive=False)
        (spool.path / "drop").mkdir(exist_ok=True)
        observer.schedule(
            _Doorbell(self._drop_arrived, str(spool.path / "drop")), str(spool.path / "drop"), recursive=True
        )
        observer.start()
        try:
            try:
                for t, i, st in spool.recover(self.server_id):
                    self._info("task %s/%s left by an earlier run of this server: %s", t, i, st.name)
            except OSError as exc:  # a full or read-only spool: they are reaped as zombies once it recovers
                self._warn("could not take back tasks of an earlier run: %s (their timeout will)", exc)
            ClaimLock(spool, self.server_id)  # a lock its workers could not take fails here, not in each of them
            self._beat()  # the workers' first lease
            for _ in range(self.workers):
                self._spawn()
            self._loop(poll)
        finally:
            observer.stop()
            self._shutdown()
            observer.join(timeout=5)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(self._wake_r)
            os.close(self._wake_w)
        self._info("stopped")
        return 0

    def _loop(self, poll: float | None) -> None:
        """Wait for events, workers and timers; act on them.

        The timers of an idle daemon share one wake-up per heartbeat: the rescan that backs up inotify
        runs with the heartbeat (same period, same start), and a sweep due before the next heartbeat
        runs with this one. Each wake-up of the main process costs far more than its system calls
        (cold caches: a millisecond or more on a busy host), so their number, not their work, is what an
        idle daemon's CPU is made of.
        """
        rescan = poll if poll is not None else self.rescan if self.rescan is not None else self.heartbeat
        next_sweep = time.monotonic()  # sweep at once: drop-ins and zombies left while we were down
        next_beat = 0.0
        next_scan = 0.0
        next_cancel_check = 0.0
        want_claim = True
        drain_until: float | None = None
        burst_holds = -1
        while True:
            now = time.monotonic()
            if self._stop >= 2:
                return
            if self._stop == 1 and drain_until is None:
                drain_until = now + self.grace
                self._lease[2] = 1.0  # no worker claims again; then the idle ones are told to stop
                self._info("stopping: no new claims; %d running tasks get %g s to finish", self._running(), self.grace)
                for w in self._pool:  # each worker stops after its current task; an idle one at once
                    with contextlib.suppress(OSError):
                        w.conn.send(None)
            if drain_until is not None and (not self._pool or now >= drain_until):
                return
            beat_due = now >= next_beat
            if now >= next_sweep or (
                beat_due and self.sweep_interval >= self.heartbeat and next_sweep < now + self.heartbeat
            ):
                self._sweep()
                next_sweep = now + self.sweep_interval * random.uniform(0.8, 1.2)
                want_claim = True
            if self._drop_due and not self._stop:
                self._drop_due = False
                self._ingest()
                want_claim = True
            if beat_due:
                want_claim |= self._beat()  # after a lapse, idle workers wait for this
                next_beat = now + self.heartbeat
            scan = now >= next_scan
            if scan:
                self._delayed_changed = True
                next_scan = now + rescan
            if self._delayed_changed or (self._next_due is not None and self.spool.clock() >= self._next_due):
                self._delayed_changed = False
                try:
                    self._next_due = self.spool.promote_due()
                except OSError as exc:  # read-only or failing spool: the next scan tries again
                    self._warn("could not promote delayed tasks in %s: %s (will retry)", self.spool.path, exc)
                    self._next_due = None
                want_claim |= not scan  # an event or the timer; a rescan decides below (a promotion shows there)
            if scan:
                # enqueued/'s mtime is the truth only on a local file system; elsewhere every rescan looks
                want_claim |= poll is not None or not self.spool.local or self._queue_changed()
            if self._busy() and now >= next_cancel_check:
                self._check_cancels(now)
                next_cancel_check = now + min(0.25, rescan)
            if want_claim and not self._stop:
                want_claim = False
                self._wake_one()
            if self.burst and not self._stop and self._all_idle() and Lease.valid(self._lease):
                for w in self._pool:  # each recorded its last attempt before it said "idle"
                    self._refresh(w)
                if self._holds == burst_holds:  # every worker found the queue empty after the last sweep
                    return
                burst_holds = self._holds
                self._sweep()
                want_claim = False
                self._wake_one()
            deadline = min(
                [min(w.deadline, w.kill_at) for w in self._pool if not w.idle]
                + [next_sweep, next_beat, next_scan]
                + ([drain_until] if drain_until else [])
                + ([next_cancel_check] if self._busy() else [])
                + ([now + self._next_due - self.spool.clock()] if self._next_due is not None else [])
            )
            ready = self._wait(max(0.0, deadline - time.monotonic()))
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                want_claim = self._arrived = True
            for w in list(self._pool):
                if w.fds[0] in ready:
                    self._collect(w)
                if w.fds[1] in ready and w in self._pool:
                    self._collect(w)  # what it said before it went
                    self._bury(w)
            self._enforce_timeouts()
            want_claim |= self._wake_due
            self._wake_due = False

    def _wait(self, timeout: float) -> set[int]:
        """The descriptors that are ready among the wake-up pipe and each worker's pipe and sentinel.

        One ``poll`` object kept while the pool stays the same (``multiprocessing.connection.wait``
        builds a selector per call, twice per task).
        """
        fds = [self._wake_r]
        for w in self._pool:
            fds += w.fds
        if fds != self._polled:
            self._poller = select.poll()
            for fd in fds:
                self._poller.register(fd, select.POLLIN)
            self._polled = fds
        # in whole milliseconds, rounded up: a deadline a fraction of one away must not spin
        return {fd for fd, _ in self._poller.poll(math.ceil(timeout * 1000))}

    # ------------------------------------------------------------------ claiming

    def _queue_changed(self) -> bool:
        """Whether a rescan on inotify should wake a worker: ``enqueued/`` changed since the last one that did.

        Every arrival, claim and promotion renames in ``enqueued/`` and so moves its mtime (nanoseconds on
        a local file system): an unchanged one means nothing arrived whose event inotify could have
        dropped. An mtime younger than 2 s is not trusted (a change in the same clock tick as the
        ``stat`` leaves it as it was), nor is it after a worker could not claim (it retries on a rescan).
        Each sweep still wakes a worker, whatever the mtime says.
        """
        try:
            mtime = os.stat(self.spool.path / "enqueued").st_mtime_ns
        except OSError:
            return True
        settled = time.time_ns() - mtime > 2_000_000_000
        if mtime == self._scanned_mtime and settled and not self._claim_failed:
            return False
        self._scanned_mtime = mtime if settled else None
        self._claim_failed = False
        return True

    def _wake_one(self) -> None:
        """Send "go" to one idle worker (it claims what it finds).

        Waking one worker at a time keeps an idle daemon to one listing of the
        queue per wake-up; a worker that finds a task says "hold", and that
        wakes the next one (see :meth:`_collect`), so a burst of arrivals still
        reaches every worker within a few milliseconds.
        """
        if any(w.looking for w in self._pool):
            self._rewake = True  # a worker is looking already, maybe at a listing older than this arrival
            return
        if self._arrived and any(self._between_tasks(w) for w in self._pool):
            # an arrival, and a busy worker between tasks: its listing may be older than the arrival, and it
            # may be about to say "idle" (it says nothing when it finds work); its "idle" wakes another worker
            self._rewake = True
        self._arrived = False
        for w in self._pool:
            if w.idle:
                w.idle, w.looking = False, True
                try:
                    w.conn.send("go")
                except OSError:  # it died meanwhile: its sentinel says so
                    continue
                return
        # all busy: each claims the next task itself when it is done

    def _between_tasks(self, w: _Worker) -> bool:
        """Whether a busy worker has ended its last task and not begun the next (its slot is read)."""
        if w.idle:
            return False
        self._refresh(w)
        return w.claim is None

    def _all_idle(self) -> bool:
        return bool(self._pool) and all(w.idle for w in self._pool)

    def _busy(self) -> bool:
        """Whether a worker may be running a task (its slot says which): one that is not waiting for "go"."""
        return not self._all_idle() and bool(self._pool)

    def _running(self) -> int:
        """How many workers run a task now (their slots are read)."""
        for w in self._pool:
            self._refresh(w)
        return sum(1 for w in self._pool if w.claim is not None)

    def _refresh(self, w: _Worker) -> int:
        """:meth:`_Worker.refresh`, counting the attempts recorded (see burst mode in :meth:`_loop`)."""
        new = w.refresh(self._root, self.server_id)
        self._holds += new
        return new

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        slot = Slot(self._ctx)
        process = self._ctx.Process(
            target=worker_main,
            args=(
                child,
                str(self.spool.path),
                self.server_id,
                self._lease,
                self._key_file,
                self.max_tasks_per_worker,
                slot,
                logging.getLogger().getEffectiveLevel(),  # what passes it, this process's handlers judge
            ),
            name=f"spoolatp-worker-{self.server_id}",
            daemon=True,
        )
        process.start()
        child.close()
        self._pool.append(_Worker(process, parent, slot))

    def _collect(self, w: _Worker) -> bool:
        """Read what a worker said; return True if another idle worker should look for work too.

        Whoever calls it (a cancel check, a kill), the wake is kept for the main loop too: each is a
        sibling's only chance to hear of work before the next rescan.
        """
        wake = False
        while True:
            try:
                if not w.pending():
                    self._wake_due |= wake
                    return wake
                msg = w.conn.recv()
            except (EOFError, OSError):
                self._wake_due |= wake
                return wake  # the worker died; its sentinel will tell
            if msg[0] == "hold":  # it found work: there may be more
                w.idle = w.looking = False
                wake = True
            elif msg[0] == "idle":
                w.idle, w.looking = True, False
                # it recorded its last task's end before it said so: nothing of it is left to judge
                w.claim, w.deadline, w.cancel_by, w.kill_at = None, float("inf"), None, float("inf")
                wake = wake or self._rewake
                self._rewake = False
            elif msg[0] == "log":  # a worker's record: through this process's handlers, as if logged here
                logging.getLogger(msg[1].name).handle(msg[1])
            elif msg[0] == "warn":
                self._claim_failed = True
                self._warn("%s", msg[1])
            elif msg[0] == "cannot" and msg[1] not in self._reported:
                self._reported.add(msg[1])
                self._warn("tasks of type %r wait: no handler %r is installed on this host", msg[1], msg[2])

    def _end_dead(self, w: _Worker, claim: Claim, why: str, *, fail: bool, count: bool = True) -> None:
        """Fail (or give back, counting a restart or not) the attempt of a worker that is gone, if this daemon may.

        Under a lease that lapsed since the claim, another host may have taken the task over: then it is
        only given back if it is still listed here (see :func:`spoolatp.workers.give_back`), never ended.
        """
        try:
            if not Lease.holds(self._lease, w.epoch):
                self._warn("task %s: %s%s", claim, why, give_back(self.spool, claim, f"{why}; the lease had lapsed"))
            elif fail:
                if self.spool.ended(claim) is None:
                    self.spool.fail(claim, why)
                self._warn("task %s: %s; attempt failed", claim, why)
            else:
                end = self.spool.abandon(claim, why, count=count)
                self._warn("task %s: %s; now %s", claim, why, end.name if end else "gone")
        except ClaimLost:
            self._warn("task %s: %s%s", claim, why, give_back(self.spool, claim, f"{why}; its claim was lost"))
        except (OSError, SpoolError) as exc:  # its timeout (any daemon's sweep) gives it back later
            self._warn("task %s: %s; could not record it: %s", claim, why, exc)

    def _retire(self, w: _Worker) -> None:
        with contextlib.suppress(OSError):
            w.conn.send(None)
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
        self._pool.remove(w)

    def _bury(self, w: _Worker) -> None:
        """A worker exited: after its ``max_tasks_per_worker``, or it died; fail the attempt it was running."""
        w.process.join(timeout=1)
        self._pool.remove(w)
        w.conn.close()
        code = w.process.exitcode
        cause = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        self._refresh(w)  # the slot as it left it
        if w.claim is not None:
            self._end_dead(w, w.claim, f"worker process {w.process.pid} {cause} while running the handler", fail=True)
        elif code != 0 and not self._stop:
            # it died between a claim and its record in the slot: that task is given back when this daemon
            # stops, or when its timeout has passed (any daemon's sweep)
            self._warn("worker %s %s between tasks", w.process.pid, cause)
        if not self._stop:
            self._spawn()

    def _check_cancels(self, now: float) -> None:
        """Pass on cancel requests to running tasks; kill those that ignore them past ``cancel_grace``."""
        for w in list(self._pool):
            self._collect(w)
            if w.idle:
                continue
            self._refresh(w)  # a task it ended meanwhile is not cancelled, nor killed
            if w.claim is None:
                continue
            if w.cancel_by is None:
                w.cancel_by = self.spool.cancel_requested(w.claim)
                if w.cancel_by is not None:
                    w.kill_at = now + self.cancel_grace
                    self._info("task %s cancelled by %s: it has %g s to stop", w.claim, w.cancel_by, self.cancel_grace)
            elif now >= w.kill_at:
                claim, who = w.claim, w.cancel_by
                if self._kill(w):
                    why = f"cancelled by {who}; killed after ignoring it for {self.cancel_grace:g} s"
                    self._end_dead(w, claim, why, fail=True)
                if not self._stop:
                    self._spawn()

    def _kill(self, w: _Worker) -> bool:
        """SIGKILL a worker (a handler past its limit does not get to decide); True if it still ran its task.

        Its slot is read again after it died: the task it ran may have ended just before, and the next
        one begun, which is given back at once without counting a restart (the kill was not for it).
        """
        self._refresh(w)
        held, seen = w.claim, w.seen
        w.process.kill()
        w.process.join()
        self._collect(w)
        self._refresh(w)
        if w.claim is not None and w.seen != seen:
            self._end_dead(w, w.claim, "its worker was killed as this task began", fail=False, count=False)
        self._pool.remove(w)
        w.conn.close()
        return held is not None and w.seen == seen and w.claim is not None

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for w in list(self._pool):
            if w.idle:
                continue
            self._refresh(w)  # it may have ended that task just now, or begun another
            if w.claim is None or now < w.deadline:
                continue
            claim, limit = w.claim, w.deadline - w.started
            if self._kill(w):
                self._end_dead(w, claim, f"killed after running past its timeout of {limit:g} s", fail=False)
            if not self._stop:
                self._spawn()

    def _shutdown(self) -> None:
        self._lease[2] = 1.0  # a worker that claims now gives that task back and stops
        for w in list(self._pool):
            self._collect(w)
            self._refresh(w)
            claim = w.claim
            if claim is not None and self._kill(w):
                why = f"daemon {self.server_id} stopped before it finished"
                self._end_dead(w, claim, why, fail=False, count=False)
        for w in list(self._pool):
            self._retire(w)
        try:
            # every worker is gone: a task still held by this server id was claimed by one that was killed
            # before it said so; it goes back without counting a restart
            for t, i, st in self.spool.recover(self.server_id, f"daemon {self.server_id} stopped", count=False):
                self._info("task %s/%s given back to the queue: %s", t, i, st.name)
        except OSError as exc:
            self._warn("could not give back the tasks of stopped workers: %s (their timeout will)", exc)
        with contextlib.suppress(OSError):
            self._beat(stopped=True)

    # ------------------------------------------------------------------ maintenance

    def _beat(self, *, stopped: bool = False) -> bool:
        """Write the heartbeat and extend the workers' lease; return True if the lease had lapsed and is back."""
        # the heartbeat's mtime is stamped after this (to the second, on some file systems: other daemons
        # wait all of --dead-after, this one trusts its lease for 0.6 of it)
        began = Lease.now()
        running = []
        for w in self._pool:
            self._refresh(w)
            if w.claim is not None:
                running.append(w.claim.key)
        if self._holds > self._told_holds:  # the workers log a task FINISHED at DEBUG only: this says they work
            took = max(began - self._told_at, 1e-9)
            count = self._holds - self._told_holds
            rate = count / took
            self._info("%d tasks began in the last %.1f s (%.0f/s); %d running", count, took, rate, len(running))
        self._told_holds, self._told_at = self._holds, began
        info = {
            "host": self._host,
            "pid": os.getpid(),
            "workers": self.workers,
            "running": running,
            "started": self._started,
            "state": "stopped" if stopped else "running",
        }
        try:
            self.spool.beat(self.server_id, info)
        except OSError as exc:
            self._warn("could not write heartbeat: %s", exc)
            return False
        lapsed = bool(Lease.now() >= self._lease[0])  # after the write: one that stalled past it lapsed too
        if lapsed and self._lease[0] > 0:
            self._lease[1] += 1  # first the epoch, then the lease (Lease.holds reads them the other way round)
            self._warn(
                "no heartbeat written for %.1f s (other daemons may have presumed this one dead): the results of tasks "
                "running here since are discarded",
                began - self._lease[0] + self.dead_after * LEASE_SHARE,
            )
        self._lease[0] = began + self.dead_after * LEASE_SHARE
        return lapsed

    def _sweep(self) -> None:
        """One maintenance pass; safe while other daemons sweep the same spool."""
        spool = self.spool
        try:
            for t, i, st in spool.reenqueue_zombies():
                self._info("abandoned task %s/%s: %s", t, i, st.name)
            self._reap_dead_daemons()
            self._delete_retired()
            spool.sweep_tmp()
        except (OSError, SpoolError) as exc:
            self._warn("sweep of %s failed: %s (will retry)", spool.path, exc)
        self._ingest()

    def _delete_retired(self) -> None:
        """Delete retired tasks, listing the ended ones only when one may be due.

        Listing ``finished/`` and ``failed/`` (and a ``stat`` per task whose type retires) grows with the
        tasks kept, so it is not done on every sweep but when the earliest task the last listing saw is
        due, or a task ended since could be (the shortest ``timeret`` after that listing), or the types'
        ``timeret`` changed, and then at most once per :data:`RETIRE_SLACK` of the shortest ``timeret``.
        No type retires (the default, ``timeret`` -1): nothing is listed. A task whose journal was stamped
        long before it reached ``finished/`` (its holder died before the move) is deleted up to the
        shortest ``timeret`` late.
        """
        spool = self.spool
        try:
            keeps = {t.name: t.timeret for t in spool.types() if t.timeret > 0}
        except (OSError, SpoolError) as exc:  # an unreadable type file must not stop the rest of the sweep
            self._warn("could not read the task types to retire tasks: %s (will retry)", exc)
            return
        if not keeps:
            self._retire_keeps = {}
            return
        now = spool.clock()
        if keeps == self._retire_keeps and now < self._retire_at:
            return
        deleted, next_due = spool.retire(keeps)
        for t, i in deleted:
            self._info("retired task %s/%s deleted", t, i)
        shortest = min(keeps.values())
        self._retire_keeps = keeps
        self._retire_at = max(min(next_due, now + shortest), now + RETIRE_SLACK * shortest)

    def _ingest(self) -> None:
        """Turn drop-ins into tasks (on a sweep, and as soon as watchdog sees one arrive)."""
        try:
            report = dropin.ingest(self.spool)
        except (OSError, SpoolError) as exc:
            self._warn("ingest of drop-ins failed: %s (will retry)", exc)
            return
        if report.enqueued or report.recovered:
            self._info("drop-ins: %d enqueued, %d recovered", len(report.enqueued), len(report.recovered))
        for file, reason in report.rejected:
            self._warn("drop-in %s rejected: %s", file, reason)

    def _reap_dead_daemons(self) -> None:
        """Re-enqueue the tasks of daemons whose heartbeat stopped ``dead_after`` seconds ago."""
        spool = self.spool
        now = spool.clock()
        for beat in spool.daemons():
            server = str(beat.get("server", ""))
            if not server or server == self.server_id:
                continue
            age = now - float(beat.get("seen", beat.get("beat", now)))  # the file server's stamp, not the writer's
            if beat.get("state") == "stopped" or age <= self.dead_after:
                continue
            for t, i, st in spool.recover(server, f"daemon {server} presumed dead (no heartbeat for {age:.0f} s)"):
                self._info("task %s/%s of dead daemon %s: %s", t, i, server, st.name)
