"""What runs in a daemon's worker process: claim, start, handler, end, tell the main process.

A worker (:func:`worker_main`, the target of each worker process the main
process in :mod:`spoolatp.daemon` spawns) runs the guide's consumer body one
task after another until the queue is empty. It claims and starts each task
itself, in one step (:meth:`Spool.claim_and_start <spoolatp.spool.Spool.claim_and_start>`),
and only of types whose handler is installed on this host; runs its handler
(:func:`run_claim`); and tells the main process over its pipe which attempt
it holds and its timeout before the handler runs ("hold"), and how it ended
afterwards ("done", or "next" together with the next claim's "hold"). A task
it lost track of after a false error of the file system it gives back
(:func:`give_back`). When nothing is left it says "idle" and waits for the
main process's "go" (or ``None``: stop).

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
workers, the workers know only their pipe, the lease and the spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import multiprocessing.connection
import os
import pickle
import select
import signal
import socket
import stat
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

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


def worker_main(
    conn: multiprocessing.connection.Connection,
    spool_path: str,
    server: str,
    lease: Any,
    key_file: str | None = None,
    max_tasks: int | None = None,
    runs: Any = None,
) -> None:
    """Claim and run tasks until the queue is empty, then wait for the main process to say "go" (or stop).

    Messages to the main process: ``("hold", claim, timeout, epoch)`` right
    after a claim and before its task starts (so the main process can enforce
    the timeout and give the task back if this worker dies), ``("done",
    outcome, detail)`` after it, ``("idle",)`` when nothing waits that this
    host can run, ``("cannot", type_id, handler)`` once per type whose handler
    is not installed. A "done" followed by the next claim's "hold" goes as one
    message, ``("next", outcome, detail, claim, timeout, epoch)``: one pipe
    write and one wake-up of the main process per task instead of two. From
    the main process: ``"go"`` (look again) or ``None`` (stop).

    ``lease`` is shared with the main process (see :class:`Lease`): no claim
    while it has lapsed, and no end of an attempt claimed before it lapsed.
    ``runs`` (shared with the main process) counts the tasks this worker has
    run to their end: raised before the next claim, so the main process knows
    a task has ended before the "next" that says how.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    if key_file is not None:
        os.environ[KEY_ENV] = key_file  # so the tracker's spools (a handler's TaskStatus) sign with it too
    spool = Spool(spool_path, on_event=plugins.notify)
    accept = _Acceptor(spool, conn)
    serial = ClaimLock(spool, server)
    pending = Pending(conn)
    send = sender(conn)
    ended: tuple[str, str] | None = None  # how the last task ended, not told yet: it goes with the next "hold"

    def tell_ended() -> None:
        nonlocal ended
        if ended is not None:
            send(("done", *ended))
            ended = None

    done = 0
    try:
        while max_tasks is None or done < max_tasks:
            if pending() and conn.recv() is None:  # a stop (or a redundant "go") sent while this worker was busy
                return
            claim = None
            if Lease.valid(lease):  # else presumed dead elsewhere, maybe: wait until the main process beats again
                epoch = lease[1]
                try:
                    claim, started = spool.claim_and_start(server, accept=accept, serial=serial)
                except QueueEmpty:
                    pass
                except (OSError, SpoolError) as exc:  # a full, read-only or unreachable spool: wait for a wake-up
                    tell_ended()
                    send(("warn", f"could not claim from {spool.path}: {exc} (will retry)"))
            if claim is None:
                tell_ended()
                send(("idle",))
                if conn.recv() is None:
                    return
                continue
            if pending() and conn.recv() is None:  # the stop came while this claim was being made
                with contextlib.suppress(OSError, SpoolError):
                    # its handler never ran: back in the queue, no restart counted, the grace not used
                    spool.abandon(claim, "its daemon stopped before its handler ran", count=False)
                return
            try:
                timeout = spool.get_type(claim.type_id).timeout
            except (UnknownTaskType, OSError, SpoolError):  # start() reports what is wrong with the type
                timeout = 3600.0
            if ended is None:
                send(("hold", claim, timeout, epoch))
            else:
                send(("next", *ended, claim, timeout, epoch))
                ended = None
            set_lease(functools.partial(Lease.holds, lease, epoch))
            try:
                outcome, detail = run_claim(spool, claim, started)
            except OSError as exc:  # the spool refused even the record of the failure (full, read-only)
                outcome, detail = "unrecorded", str(exc)
            if outcome in ("lost", "unrecorded"):
                detail += give_back(spool, claim, f"{outcome} after an error: {detail}")
            elif outcome == "unrunnable":
                accept.unrunnable.add(claim.type_id)
            if runs is not None:
                runs.value += 1  # before the next claim: the main process must not kill this worker for it now
            ended = (outcome, detail)
            done += 1
        tell_ended()
    except (EOFError, OSError):  # the main process went away
        return
    finally:
        with contextlib.suppress(EOFError, OSError):
            tell_ended()  # a worker that stops says how its last task ended first


class Pending:
    """Whether the main process sent something: ``Connection.poll()`` without its selector built per call."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._poll = select.poll()
        self._poll.register(conn.fileno(), select.POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))


def sender(conn: multiprocessing.connection.Connection) -> Callable[[Any], None]:
    """``conn.send`` at less cost: plain pickle, which the other side's ``recv()`` reads as it reads its own."""

    def send(msg: Any) -> None:
        conn.send_bytes(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))

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
    """The main process's proof to its workers that this daemon is not presumed dead: two shared doubles.

    ``[0]``: until when (:meth:`now`, one clock for every process of the
    host) the lease holds: the start of the last heartbeat written plus
    :data:`LEASE_SHARE` of ``dead_after``, before any other daemon may judge
    the heartbeat stale. ``[1]``: an epoch, raised when a heartbeat is written
    after the lease had lapsed. A worker claims only under a valid lease and
    ends an attempt only while the lease of its claim's epoch still holds, so
    a host that comes back from a partition never claims before its heartbeat
    is fresh again, nor finishes a task another host may have taken over.
    """

    @staticmethod
    def now() -> float:
        # CLOCK_BOOTTIME goes on while the host is suspended, as other hosts' time does; CLOCK_MONOTONIC stops
        return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))

    @staticmethod
    def valid(lease: Any) -> bool:
        return bool(lease[0] > Lease.now())

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

    def __init__(self, spool: Spool, conn: multiprocessing.connection.Connection) -> None:
        self.spool, self.conn = spool, conn
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
            self.conn.send(("cannot", type_id, handler))
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
    return State.FAILED.name, ""
