"""What runs in a daemon's worker process: claim, start, handler, end, and a record of it for the main process.

A worker (:func:`worker_main`, the target of each worker process the main
process in :mod:`spoolatp.daemon` spawns) runs the guide's consumer body one
task after another until the queue is empty. It claims and starts each task
itself, in one step (:meth:`Spool.claim_and_start <spoolatp.spool.Spool.claim_and_start>`),
and only of types whose handler is installed on this host; runs its handler
(:func:`run_claim`); and logs how each task ended. A task it lost track of
after a false error of the file system it gives back (:func:`give_back`).

**Slot.** Which attempt a worker runs, since when and under which timeout
is in its :class:`Slot`, memory it shares with the main process: written
before each handler runs and after each task's end is recorded, read by the
main process when it judges timeouts, cancels, a dead worker or its
heartbeat. A task costs no message and no wake-up of the main process (a
message per task cost the daemon a third of its throughput). Messages go
over the worker's pipe only when something changes for the main process:
"hold" (the first claim after it was woken: idle siblings may find work
too), "idle" (nothing waits that this host can run; it waits for "go", or
``None``: stop), "warn" and "cannot" (a handler not installed here).

**Lease.** The main process extends a :class:`Lease` shared with its workers
each time it writes its heartbeat (:data:`spoolatp.daemon.LEASE_SHARE` of
``dead_after``). A worker claims only while the lease holds, and ends an
attempt only while the lease of its claim's epoch still holds
(:func:`spoolatp.spool.set_lease`), so a host whose heartbeat lapsed never
finishes a task another host may have taken over.

**Claim lock.** The workers of one daemon share a server id and claim into
the same ``running/<SERVER>/``. On a network file system that answers a
successful rename with ENOENT, a task found there proves the rename was this
worker's only if no sibling could have put it there: :class:`ClaimLock`, a
``flock`` on a file in this host's temporary directory
(:func:`host_lock_path`), serializes their claim renames.

Nothing here imports :mod:`spoolatp.daemon`: the main process knows its
workers, the workers know only their pipe, their slot, the lease and the spool.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import logging.handlers
import multiprocessing.connection
import os
import pickle
import select
import signal
import socket
import stat
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from spoolatp import plugins
from spoolatp.errors import (
    ClaimLost,
    CorruptTaskFile,
    HandlerNotFound,
    QueueEmpty,
    Retry,
    SpoolError,
    UnknownTaskType,
)
from spoolatp.format import KEY_ENV, Claim, StartedTask, State
from spoolatp.spool import Spool, set_lease

log = logging.getLogger(__name__)


def worker_main(
    conn: multiprocessing.connection.Connection,
    spool_path: str,
    server: str,
    lease: Any,
    key_file: str | None = None,
    max_tasks: int | None = None,
    slot: Slot | None = None,
    log_level: int | None = None,
) -> None:
    """Claim and run tasks until the queue is empty, then wait for the main process to say "go" (or stop).

    ``slot`` (shared with the main process, see :class:`Slot`) records each
    attempt before its handler runs, and its end after the end is recorded.
    Messages to the main process: ``("hold",)`` after the first claim since
    it was started or woken, ``("idle",)`` when nothing waits that this host
    can run, ``("warn", text)``, ``("cannot", type_id, handler)`` once per
    type whose handler is not installed. From the main process: ``"go"``
    (look again) or ``None`` (stop).

    ``lease`` is shared with the main process (see :class:`Lease`): no claim
    while it has lapsed, no end of an attempt claimed before it lapsed, and
    no claim once it says the daemon stops. ``log_level``: this process's log
    records of that level and above (the end of each task, the handler's own)
    go to the main process as ``("log", record)``, which logs them through its
    handlers: one log, in the daemon's format, wherever the daemon logs.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    send = sender(conn)
    if log_level is not None:
        _log_to_main(send, log_level)
    if key_file is not None:
        os.environ[KEY_ENV] = key_file  # so the tracker's spools (a handler's TaskStatus) sign with it too
    spool = Spool(spool_path, on_event=plugins.notify)
    accept = _Acceptor(spool, send)
    serial = ClaimLock(spool, server)
    tell = True  # the first claim since this worker was started or woken says "hold": its siblings may find work
    done = 0
    try:
        while max_tasks is None or done < max_tasks:
            if Lease.stopping(lease):  # its daemon stops: no new claim
                return
            claim = None
            if Lease.valid(lease):  # else presumed dead elsewhere, maybe: wait until the main process beats again
                epoch = lease[1]
                try:
                    claim, started = spool.claim_and_start(server, accept=accept, serial=serial)
                except QueueEmpty:
                    pass
                except (OSError, SpoolError) as exc:  # a full, read-only or unreachable spool: wait for a wake-up
                    send(("warn", f"could not claim from {spool.path}: {exc} (will retry)"))
            if claim is None:
                send(("idle",))
                if conn.recv() is None:
                    return
                tell = True
                continue
            if Lease.stopping(lease):  # the stop came while this claim was being made
                with contextlib.suppress(OSError, SpoolError):
                    # its handler never ran: back in the queue, no restart counted, the grace not used
                    spool.abandon(claim, "its daemon stopped before its handler ran", count=False)
                return
            try:
                timeout = spool.get_type(claim.type_id).timeout
            except (UnknownTaskType, OSError, SpoolError):  # start() reports what is wrong with the type
                timeout = 3600.0
            if slot is not None:
                slot.hold(claim, timeout, epoch)  # before the handler runs: from now on its timeout counts
            if tell:
                send(("hold",))
                tell = False
            set_lease(functools.partial(Lease.holds, lease, epoch))
            try:
                outcome, detail = run_claim(spool, claim, started)
            except OSError as exc:  # the spool refused even the record of the failure (full, read-only)
                outcome, detail = "unrecorded", str(exc)
            if outcome in ("lost", "unrecorded"):
                detail += give_back(spool, claim, f"{outcome} after an error: {detail}")
            elif outcome == "unrunnable":
                accept.unrunnable.add(claim.type_id)
            if slot is not None:
                took = slot.ended()  # before the next claim: the main process must not kill this worker for it now
                _log_end(server, claim, outcome, detail, took)
            done += 1
    except (EOFError, OSError):  # the main process went away
        return


def _log_to_main(send: Callable[[Any], None], level: int) -> None:
    """Send this process's log records of ``level`` and above to the main process (see :func:`worker_main`)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_ToMain(send))
    root.setLevel(level)


class _ToMain(logging.handlers.QueueHandler):
    """A log record, formatted into plain strings (picklable), as a message on the worker's pipe."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # no queue: enqueue() sends
        self._send = send

    def enqueue(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(EOFError, OSError):  # the main process went away: nobody to log for
            self._send(("log", record))


def _log_end(server: str, claim: Claim, outcome: str, detail: str, took: float) -> None:
    """One line per task: at DEBUG for a task FINISHED, else at INFO or WARNING.

    A line per task at INFO cost the daemon a fifth of its throughput, and floods a log at thousands of
    tasks a second; each task's journal has its history, and the main process logs how many tasks began
    with each heartbeat.
    """
    if outcome == "unrunnable":
        what = "cannot run here (handler not found)"
        log.warning("[%s] type %r %s; task %s given back", server, claim.type_id, what, claim)
    elif outcome == "lost":
        log.warning("[%s] task %s: result discarded, the claim was taken away (%s)", server, claim, detail)
    elif outcome == "unrecorded":
        log.warning("[%s] task %s: its end could not be recorded: %s", server, claim, detail)
    else:
        level = logging.DEBUG if outcome == "FINISHED" else logging.INFO
        if log.isEnabledFor(level):
            ids = (claim.type_id, claim.task_id, claim.attempt)
            log.log(level, "[%s] task %s/%s attempt %d %s in %.3f s", server, *ids, outcome, took)


class _SlotData(ctypes.Structure):
    _fields_ = [
        ("holds", ctypes.c_int64),  # attempts recorded since the worker started
        ("runs", ctypes.c_int64),  # of those, the ones whose end is recorded
        ("attempt", ctypes.c_int64),
        ("started", ctypes.c_double),  # time.monotonic() (one clock for every process of the host)
        ("timeout", ctypes.c_double),
        ("epoch", ctypes.c_double),  # the lease's epoch when it claimed
        ("key", ctypes.c_char * 256),  # UTF-8; a key is at most 233 bytes and holds no NUL
    ]


class SlotView(NamedTuple):
    holds: int
    runs: int
    key: str
    attempt: int
    started: float
    timeout: float
    epoch: float

    @property
    def running(self) -> bool:
        """Whether the last attempt recorded has not ended: its handler runs (or is about to)."""
        return self.runs < self.holds


class Slot:
    """The attempt a worker runs, in memory it shares with the main process.

    The worker writes it (:meth:`hold` after each claim, before the handler
    runs; :meth:`ended` once the task's end is recorded) and the main
    process reads it (:meth:`read`). A lock makes every read see one whole
    write. The worker holds it for a few stores, but may be killed in them:
    then :meth:`read` gives up after a second and answers None, and the
    task it was recording is given back as one whose claim was never
    reported (when the daemon stops, or by the timeout sweep).
    """

    def __init__(self, ctx: Any) -> None:
        self._data = ctx.RawValue(_SlotData)
        self._lock = ctx.Lock()

    def hold(self, claim: Claim, timeout: float, epoch: float) -> None:
        with self._lock:
            d = self._data
            d.key = claim.key.encode()
            d.attempt = claim.attempt
            d.started = time.monotonic()
            d.timeout = timeout
            d.epoch = epoch
            d.holds += 1

    def ended(self) -> float:
        """Record the end of the attempt held; return the seconds since :meth:`hold`."""
        with self._lock:
            self._data.runs += 1
            return float(time.monotonic() - self._data.started)

    def read(self) -> SlotView | None:
        """What the worker recorded last; None if its lock could not be had (a worker killed in a write)."""
        if not self._lock.acquire(timeout=1.0):
            return None
        try:
            d = self._data
            return SlotView(d.holds, d.runs, d.key.decode(), d.attempt, d.started, d.timeout, d.epoch)
        finally:
            self._lock.release()


class Pending:
    """Whether the main process sent something: ``Connection.poll()`` without its selector built per call."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._poll = select.poll()
        self._poll.register(conn.fileno(), select.POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))


def sender(conn: multiprocessing.connection.Connection) -> Callable[[Any], None]:
    """``conn.send`` at less cost: plain pickle, which the other side's ``recv()`` reads as it reads its own.

    Thread-safe: a handler's threads log through it too, and two writes at once would garble the pipe.
    """
    lock = threading.Lock()

    def send(msg: Any) -> None:
        data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
        with lock:
            conn.send_bytes(data)

    return send


def give_back(spool: Spool, claim: Claim, reason: str) -> str:
    """Re-enqueue a task this worker lost track of if it is still held here; say what became of it.

    A network file system's false error (GlusterFS: ESTALE on a directory this host just renamed, for
    seconds) makes a worker believe its task was taken away while it still sits in running/ or
    scheduled/ here, where nobody would look at it before its timeout. ``give_back`` finds it by readdir
    and leaves it alone if a later attempt holds it (a sibling worker's claim).
    """
    try:
        end = spool.give_back(claim, reason)
    except (OSError, SpoolError) as exc:  # its timeout gives it back later
        return f"; could not give it back: {exc}"
    return f"; it was still held here: given back, now {end.name}" if end is not None else ""


class Lease:
    """The main process's proof to its workers that this daemon is not presumed dead: three shared doubles.

    ``[0]``: until when (:meth:`now`, one clock for every process of the
    host) the lease holds: the start of the last heartbeat written plus
    :data:`LEASE_SHARE` of ``dead_after``, before any other daemon may judge
    the heartbeat stale. ``[1]``: an epoch, raised when a heartbeat is written
    after the lease had lapsed. A worker claims only under a valid lease and
    ends an attempt only while the lease of its claim's epoch still holds, so
    a host that comes back from a partition never claims before its heartbeat
    is fresh again, nor finishes a task another host may have taken over.
    ``[2]``: not 0 once the daemon stops: a worker makes no new claim, and
    gives back, unrun, one it made as the stop came.
    """

    @staticmethod
    def now() -> float:
        # CLOCK_BOOTTIME goes on while the host is suspended, as other hosts' time does; CLOCK_MONOTONIC stops
        return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))

    @staticmethod
    def valid(lease: Any) -> bool:
        return bool(lease[0] > Lease.now())

    @staticmethod
    def stopping(lease: Any) -> bool:
        return bool(lease[2])

    @staticmethod
    def holds(lease: Any, epoch: float) -> bool:
        # the main process raises the epoch before it extends the lease: read the lease first, then the epoch
        valid = lease[0] > Lease.now()
        return bool(valid and lease[1] == epoch)


def host_lock_path(spool: Spool, server: str, what: str) -> str:
    """A lock file on this host's disk for ``what`` of daemon ``server`` on ``spool`` (never in the spool)."""
    folder = os.path.join(tempfile.gettempdir(), f"spoolatp-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        # another user's folder could hold the lock forever, or swap the lock file
        raise SpoolError(
            f"{folder} is not a directory of this user's that only it may write to; remove it (or set TMPDIR)"
        )
    real = hashlib.sha256(os.path.realpath(spool.path).encode()).hexdigest()[:16]
    return os.path.join(folder, f"{real}-{hashlib.sha256(server.encode()).hexdigest()[:16]}.{what}.lock")


class ClaimLock:
    """The lock that serializes the claim renames of the workers sharing a server id, on this host's disk.

    A claim renames ``enqueued/KEY`` into ``running/SERVER/`` (``scheduled/SERVER/``
    for the guide's two-step claim). When a network file system answers that
    rename with ENOENT, the task being there proves the rename was this process's only if no
    other process of the same server id put it there (see ``Spool.claim``).
    It is a host-local singleton: ``flock`` on a file in the local temporary
    directory, which the kernel releases when a holder dies, even by
    ``kill -9`` (it does not work across hosts on sshfs, and need not: a
    server id is one daemon on one host). The file stays open, so a claim
    costs two ``flock`` calls (filelock's ``FileLock`` opens and closes its
    file on every acquire: about 0.3 ms, as much as the rest of a claim).
    """

    def __init__(self, spool: Spool, server: str) -> None:
        self.path = host_lock_path(spool, server, "claims")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class _Acceptor:
    """``accept`` for a worker's claims: only types whose handler is installed on this host."""

    def __init__(self, spool: Spool, send: Callable[[Any], None]) -> None:
        self.spool, self.send = spool, send
        self.unrunnable: set[str] = set()  # types whose handler failed to load here (HandlerNotFound)
        self._told: set[str] = set()

    def __call__(self, type_id: str) -> bool:
        if type_id in self.unrunnable:
            return False
        try:
            handler = self.spool.get_type(type_id).handler
        except (UnknownTaskType, ValueError):
            return False
        if plugins.can_run(handler):
            return True
        if type_id not in self._told:  # told once; the main process says so once per daemon
            self._told.add(type_id)
            self.send(("cannot", type_id, handler))
        return False


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent (the fork server) dies.

    The fork server exits when the daemon dies, even by ``kill -9``; without
    this a worker would go on running a task whose claim a restarted daemon
    or another host is about to take back.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def run_claim(spool: Spool, claim: Claim, started: StartedTask | None = None) -> tuple[str, str]:
    """The guide's consumer body for one claim; return ``(outcome, detail)``.

    ``started``: what :meth:`Spool.claim_and_start` returned with the claim; None: start it here.
    outcome is a state name, ``"lost"`` (the claim was taken away) or
    ``"unrunnable"`` (the handler is not installed here).
    """
    from spoolatp.tracker import TaskStatus  # the handler's view of its task

    status = TaskStatus(claim)
    try:
        _, _, handler_name, inputs = started if started is not None else spool.start(claim)
        try:
            handler = plugins.load_handler(handler_name)
        except HandlerNotFound as exc:
            spool.abandon(claim, f"not runnable on {socket.gethostname()}: {exc}", count=False)
            return "unrunnable", claim.type_id
        handler(status, inputs)
        if status.ended is not None:  # the handler ended it itself (setSuccess / setFailure)
            return status.ended.name, ""
        who = spool.cancel_requested(claim)
        if who is not None and spool.ended(claim) is None:
            spool.fail(claim, f"cancelled by {who}; the handler stopped when asked")
        elif spool.finish_if_not_done(claim):
            return State.FINISHED.name, ""
    except ClaimLost as exc:
        ended = spool.ended(claim)  # ended through another handle of the guide's API, or really taken away
        return (ended.name, "") if ended is not None else ("lost", str(exc))
    except CorruptTaskFile as exc:
        return "corrupt", str(exc)
    except Retry as exc:
        return _after_failure(spool, claim, exc.reason or "the handler asked for a retry", exc.delay, asked=True)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}".strip()
        return _after_failure(spool, claim, detail, None, asked=False)
    return (spool.ended(claim) or State.FAILED).name, ""


def _after_failure(spool: Spool, claim: Claim, detail: str, delay: float | None, *, asked: bool) -> tuple[str, str]:
    """A handler raised: fail the task, or retry it later if its type (or the handler) says so."""
    try:
        ended = spool.ended(claim)
        if ended is not None:
            spool.note(claim, f"handler raised after the task ended: {detail}")
            return ended.name, ""
        who = spool.cancel_requested(claim)
        if who is not None:
            spool.fail(claim, f"cancelled by {who}: {detail}")
            return State.FAILED.name, ""
        if asked or spool.get_type(claim.type_id).retries > 0:
            return spool.retry_later(claim, detail, delay).name, ""
        spool.fail(claim, detail)
    except ClaimLost as lost:
        return "lost", str(lost)
    except CorruptTaskFile as exc:  # its journal could not take the failure (a FIFO planted there): quarantined
        return "corrupt", str(exc)
    return State.FAILED.name, ""
