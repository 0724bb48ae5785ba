"""The queue on disk: tasks are directories that move between state directories.

A spool is a directory. ``ls`` it and you see::

    spool.json                  settings every producer must agree on (JSON)
    types/<TYPE>.json           registered task types (JSON: handler, timeout, ...)
    ids/<TYPE>~<ID>             one symbolic link per task, never followed: its
                                target text is the task's KEY (see below)
    enqueued/<KEY>/             ENQUEUED tasks, most urgent then oldest first when names are sorted
    delayed/<NOTBEFORE>~<KEY>/  ENQUEUED tasks that may not start before NOTBEFORE (ns, 16 hex digits)
    scheduled/<SERVER>/<KEY>/   SCHEDULED: claimed by consumer SERVER, not started
    running/<SERVER>/<KEY>/     RUNNING on consumer SERVER
    finished/<KEY>/             FINISHED
    failed/<KEY>/               FAILED
    slots/<N>                   only with max_queue: symlink to the KEY holding slot N
    daemons/<SERVER>.json       each running daemon's heartbeat (JSON, rewritten by rename)
    files/<TYPE>~<ID>/          files a task owns (hot-folder drop-ins), removed with the task
    tmp/                        private work: enq~, reap~, del~, set~ entries
    quarantine/<NAME>           files that failed validation, beside <NAME>.reason

The state directories are named after the states, so ``ls`` and the code agree.

**Task key.** ``KEY = <RANK><STAMP>~<TYPE>~<ID>``: RANK is one digit, 9
minus the task's priority (0..9, higher is more urgent); STAMP is the enqueue
time by the spool's clock in nanoseconds as 16 lower-case hex digits. So
sorting keys sorts tasks most urgent first, oldest first within a priority.
TYPE and ID are the identifiers with ``%``, ``~`` and a leading ``.``
percent-encoded; everything else is kept (spaces and non-ASCII letters
included). Identifiers with ``/``, ``\\``, NUL, control characters or ``..``,
and ``.`` alone, are refused (``ValueError``), so a key is always one safe
path component.

**Task directory.** Each task is a directory holding:

- ``task``: the record, written once at enqueue and never changed, then the
  journal. A header line ``SPOOLATP-TASK 1 <length> <sha256>`` (unsigned
  spool) or ``SPOOLATP-TASK 2 <length> hmac-sha256:<KEYID>:<MAC>`` (signed
  spool, see below) then the pickled record
  ``{"type", "id", "input", "enqueued", "message", "slot"}``, <length>
  bytes. A record whose header, length, checksum or signature is wrong is
  never unpickled: its task is moved to ``quarantine/`` with the reason.
- the journal, after the record in ``task`` (spool format 2; format 1 has a
  ``journal`` file instead, see :attr:`Spool.journal_file`): JSON lines
  appended by whoever holds the task, one per state change, log message or
  progress report: ``{"t": time, "s": state code or null, "m": message,
  "srv": server, "att": attempt, "p": progress fraction, "restart": n}``,
  written compact (no spaces) with ``t``, ``s``, ``m`` first, which lets a
  reader count the records of a state without parsing every line. The
  task's history is the enqueue record followed by the journal. One file
  per task, not two: creating a file costs a disk file system more than
  anything else a task does.
- ``response``: optional, written by the handler (tmp name then rename):
  header line ``SPOOLATP-RESPONSE 1 <length> <sha256> <JSON meta>`` (or
  ``2 <length> hmac-sha256:<KEYID>:<MAC> <JSON meta>``) then the bytes.

**Signed spools.** A spool whose ``spool.json`` says ``"signed": true`` has
a secret key that never lives in the spool: each process gets it from
``Spool(key_file=...)`` or ``$SPOOLATP_KEY_FILE``; ``spool.json`` records
only ``key_id`` (the first 8 hex digits of the key's SHA-256), so a host
with another key is refused before it reads anything. Task and response
files then carry format 2: ``MAC`` is HMAC-SHA256 under the key over
``MAGIC NUL LENGTH NUL KEY NUL META NUL PAYLOAD``, binding the file to its
kind and to its task's KEY (a signed file copied to another task or
priority does not verify). A reader checks it (``hmac.compare_digest``)
before anything is unpickled; a format 1 file, or a wrong MAC, is
quarantined. ``types/*.json`` carry a ``"hmac"`` member over their other
members and name. Journals, heartbeats and ``cancel`` files are JSON, never
unpickled, and unsigned. A process that has a key refuses a spool that is
not signed (``spool.json`` lives in the spool; it cannot lower the bar).

**Links.** Nothing found in the spool is followed out of it: files are
opened ``O_NOFOLLOW`` (and ``O_NONBLOCK``: a FIFO planted in place of a
file is taken as a damaged file, never waited on), a task "directory" that
is a symbolic link is quarantined (moved, never followed), the text of an
``ids/`` or ``slots/`` link is used only after it parses as a task key, and
identifiers are checked (:func:`validate_id`) wherever they enter.

**State is where the directory is.** Every state change is one ``rename`` of
the task directory within the spool's file system, so a reader sees a task
in exactly one state directory and never half-written. A consumer claims by
renaming ``enqueued/KEY`` into its own ``scheduled/SERVER/`` (or straight into
``running/SERVER/`` with :meth:`Spool.claim_and_start`); of two racing
consumers exactly one rename succeeds.

**Fencing.** Everything a consumer writes while it holds a task goes through
the path of its task directory. Whoever takes a task away from it (zombie
re-enqueue, delete) first renames that directory into ``tmp/``; from then on
the old holder's writes fail with ENOENT and are refused as
:class:`~spoolatp.errors.ClaimLost`. The attempt number in the journal tells
a holder's own terminal record from someone else's.

**Order.** Tasks are dequeued by key: higher priority first, oldest first
within a priority. A re-enqueued task keeps its key and therefore its
original place. A consumer lists ``enqueued/`` once and works through the
sorted list; it lists again when the directory changed and the last listing
is older than twenty times what a listing costs (at least 50 ms), so a more
urgent arrival is seen soon without listing the queue per task.

**Delayed tasks** (``not_before``, and retries after a failure) wait in
``delayed/`` under a name that starts with the time they become due, by the
spool's clock; whoever lists the queue moves the due ones to ``enqueued/``
(one rename, one winner).

**Cancel.** An ENQUEUED task is cancelled by taking it (rename into ``tmp/``)
and ending it FAILED. For a SCHEDULED or RUNNING task a file ``cancel`` is
created in its task directory; the daemon holding it sees it, the handler
can ask ``taskStatus.cancelled()``, and the task ends FAILED.

**Queue limit.** With ``max_queue`` N > 0, an enqueue must first create one of
the symlinks ``slots/0`` .. ``slots/N-1`` (creation is atomic and fails if it
exists, on NFS too); the claim that dequeues the task removes it. So the
number of ENQUEUED tasks never exceeds N, whichever hosts enqueue.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import itertools
import json
import logging
import math
import os
import pickle
import random
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spoolatp import fsio
from spoolatp.errors import (
    ClaimLost,
    CorruptTaskFile,
    QueueEmpty,
    QueueFull,
    ResponseNotFound,
    SigningKeyError,
    SpoolError,
    StorageError,
    TaskExists,
    TaskNotFound,
    TaskTooLarge,
    UnknownTaskType,
)
from spoolatp.format import (
    DEFAULT_PRIORITY,
    DIR_OF,
    KEY_ENV,
    RESPONSE_MAGIC,
    SPOOL_DIRS,
    SPOOL_FORMAT,
    TASK_MAGIC,
    Claim,
    LogRecord,
    StartedTask,
    State,
    TaskInfo,
    TaskType,
    decode_name,
    encode_name,
    journal_offset,
    key_id,
    key_priority,
    key_time,
    load_key,
    make_key,
    parse_key,
    seal,
    type_mac,
    unseal,
    validate_id,
    validate_priority,
)

log = logging.getLogger(__name__)

#: default of the setting ``max_input_bytes``: largest pickled task record (64 MiB)
MAX_INPUT_BYTES = 64 << 20
#: default of the setting ``max_response_bytes``: largest response (256 MiB)
MAX_RESPONSE_BYTES = 256 << 20
#: seconds a private entry in tmp/ must be old before a sweep treats it as left by a crash
TMP_GRACE = 300.0
#: seconds a cached setting or task type is trusted before it is read again
CACHE_TTL = 1.0
#: seconds between measurements of this host's clock against the spool's
CLOCK_TTL = 30.0
#: a network mount's false "no such file" for a task file its directory lists: the task is given back (the
#: claim's reason, in its journal, says this), and quarantined only the FALSE_MISSING_LIMIT + 1st time
FALSE_MISSING = "task file listed by its directory but reported missing"
FALSE_MISSING_LIMIT = 3
#: seconds of clock difference from the spool's that earn a warning
CLOCK_WARN = 5.0

EventHook = Callable[[str, dict[str, Any]], None]

#: this process's lease (see :func:`set_lease`); None: no lease, as for a producer or a test
_lease: Callable[[], bool] | None = None


def set_lease(holds: Callable[[], bool] | None) -> None:
    """Make every end of an attempt in this process ask ``holds()`` first, and refuse it (ClaimLost) if False.

    A daemon's worker sets it: while its daemon's heartbeat lapsed (a network
    partition, a paused host) another host may have presumed it dead and run
    its tasks again. A network file system may still let a write through the
    task's old path then (GlusterFS resolves a cached path to the moved
    directory), so fencing by rename alone cannot stop it; the lease does.
    """
    global _lease
    _lease = holds


def _check_lease(claim: Claim) -> None:
    if _lease is not None and not _lease():
        raise ClaimLost(
            f"task {claim}: the heartbeat of the daemon holding it lapsed while it ran (a partition or a pause), "
            "so another host may have taken it over; this result is discarded"
        )


def default_spool_path() -> Path:
    """``$SPOOLATP_SPOOL``, else ``$XDG_DATA_HOME/spoolatp/spool`` (``~/.local/share/...``)."""
    env = os.environ.get("SPOOLATP_SPOOL")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "spoolatp" / "spool"


class Spool:
    """A spool directory: the queue, its task types and its settings.

    Opening a spool that does not exist creates it. All methods are safe to
    call from many processes and hosts at once; none takes a lock.

    :param on_event: called as ``on_event(name, info)`` after ``enqueued``,
        ``started``, ``finished``, ``failed``, ``reenqueued`` and ``retired``;
        this is the seam through which plugins observe tasks. Exceptions it
        raises are logged and ignored.
    :param key_file: the spool's key (default ``$SPOOLATP_KEY_FILE``). A new
        spool opened with a key is created signed. A process with a key
        refuses a spool that is not signed, or signed with another key; one
        without a key refuses a signed spool. Only operations that read or
        write task, response or type files check this, so a host without
        the key can still list tasks and their states.
    :raises SigningKeyError: the key file is unusable (see :func:`load_key`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        on_event: EventHook | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else default_spool_path()
        self.on_event = on_event
        env = os.environ.get(KEY_ENV)
        #: where this process's key came from (recorded nowhere in the spool), or None
        self.key_file: Path | None = Path(key_file) if key_file is not None else Path(env) if env else None
        self._key = load_key(self.key_file, self.path) if self.key_file is not None else None
        #: the public name of this process's key (see :func:`key_id`), or None
        self.key_id = key_id(self._key) if self._key is not None else None
        self._candidates: list[str] = []
        self._listed = 0.0  # time.monotonic() of the listing _candidates came from
        self._listed_mtime = 0  # mtime (ns) of enqueued/ when it was listed
        self._list_cost = 0.0  # seconds the last listing took
        self._settings: tuple[float, dict[str, Any]] | None = None
        self._upgrading = False  # spoolatp.upgrade's process: it reads a spool marked as being upgraded
        self._types: dict[str, tuple[float, TaskType]] = {}
        self._offset: tuple[float, float] | None = None
        self._server_dirs: set[str] = set()  # checked scheduled/SERVER directories (SERVER is validated)
        self._running_dirs: set[str] = set()  # running/SERVER directories this process created or found
        # the hot paths build paths as strings: a pathlib join costs more than the system call it names
        self._root = root = os.fspath(self.path)
        self._dirs = {name: os.path.join(root, name) for name in SPOOL_DIRS}
        # (server, key) of claims whose names were checked (_check_claim), with the key's (type, id)
        self._valid: dict[tuple[str, str], tuple[str, str]] = {}
        self._create()
        #: the spool's lookups are the truth (a local file system, fsio.network_fs): the careful paths that
        #: resolve NFS's and GlusterFS's false answers are skipped, and held claims are checked by size
        self._local = not fsio.network_fs(root)
        # claims this process holds, as it last left them (local file systems only): (server, key, attempt)
        # -> (task directory, state, size of the journal after this attempt's last line); see _claim_path
        self._held: dict[tuple[str, str, int], tuple[str, State, int]] = {}
        # the task file claim() validated last, (key, bytes, record): start() reads it again and, finding the
        # same bytes, takes the record instead of checking and unpickling them twice
        self._memo: tuple[str, bytes, dict[str, Any]] | None = None
        self._beat_names: dict[str, str] = {}  # server id -> its heartbeat's file name (validated)
        # access() may say "no" for what open() reaches: a sandbox refusing faccessat2, a libc without it;
        # asked once of a file that is there, it says whether _cancel_marker may trust its "no"
        self._access_works = self._local and _access_finds(f"{root}/spool.json")

    @property
    def local(self) -> bool:
        """Whether the spool is on a local file system, whose answers are the truth (see fsio.network_fs)."""
        return self._local

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def clock(self) -> float:
        """The spool's time, by which timeouts, heartbeats and retention are judged.

        Every host must agree on it, so it is this host's clock corrected by
        its offset from the file server's clock, measured from the mtime the
        server stamps on a file this process just wrote (every 30 s).
        """
        now = time.monotonic()
        if self._offset is None or now - self._offset[0] > CLOCK_TTL:
            self._offset = (now, self._measure_offset())
        return _host_time() + self._offset[1]

    def _measure_offset(self) -> float:
        probe = self.path / "tmp" / f"clock~{secrets.token_hex(6)}"
        try:
            before = _host_time()
            self._write_new(probe, b"t")
            after = _host_time()
            stamped = os.lstat(probe).st_mtime  # set by the file server's clock on a network file system
            os.unlink(probe)
        except OSError as exc:
            log.warning("cannot read the spool's clock at %s (%s); using this host's clock", self.path, exc)
            return 0.0
        offset = stamped - (before + after) / 2
        if abs(offset) > 1.5:  # mtimes may have 1 s resolution (sshfs): less is noise
            if abs(offset) > CLOCK_WARN:
                log.warning(
                    "this host's clock is %+.1f s off the spool's at %s; judging time by the spool's (sync with NTP)",
                    -offset,
                    self.path,
                )
            return offset
        return 0.0

    # ------------------------------------------------------------------ layout

    def _create(self) -> None:
        old = os.umask(0o007)  # owner and group only: the spool holds pickles
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in SPOOL_DIRS:
                (self.path / name).mkdir(exist_ok=True)
                if not fsio.real_dir(
                    self.path / name
                ):  # a link planted here would lead every operation out of the spool
                    raise StorageError(
                        errno.ENOTDIR,
                        f"{self.path / name} is not a directory but a symbolic link or a file; a spool's "
                        "directories must be real ones (was it planted? inspect it, remove it, and retry)",
                    )
            if not (self.path / "spool.json").exists():
                settings: dict[str, Any] = {"format": SPOOL_FORMAT, "max_queue": 0, "durable": False}
                if self._key is not None:  # a process with a key makes signed spools
                    settings.update(signed=True, key_id=self.key_id)
                self._write_json(self.path / "spool.json", settings)
        finally:
            os.umask(old)

    def _write_json(self, dest: Path, obj: dict[str, Any]) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True)
        self._write_json_as(os.fspath(dest), dest.name, text, self.durable)

    def _write_json_as(self, dest: str, name: str, text: str, durable: bool) -> None:
        """Replace the file ``dest`` (named ``name``) with ``text`` and a newline, whole or not at all."""
        tmp_dir, tmp = self._dirs["tmp"], f"set~{os.urandom(8).hex()}~{name}"
        self._write_in(tmp_dir, tmp, text.encode() + b"\n", durable)
        try:
            fsio.move(f"{tmp_dir}/{tmp}", dest, proof="src")  # readers see the old or the new file, never a mix
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(f"{tmp_dir}/{tmp}")
            fsio.reraise(exc, f"cannot write {name} in the spool at {self}")

    def _write_new(self, path: fsio.PathArg, data: bytes) -> None:
        """Create ``path`` (it must not exist) holding ``data``; on failure nothing is left behind.

        :raises StorageError: the file system is full or read-only.
        """
        parent, name = os.path.split(path)
        self._write_in(parent, name, data, self.durable)

    def _write_in(self, parent: str, name: str, data: bytes, durable: bool) -> None:
        """:meth:`_write_new` of ``parent/name``, fsynced if ``durable``."""
        path = f"{parent}/{name}"
        try:
            # opened relative to its directory, itself opened O_NOFOLLOW: a link planted in place of a
            # task directory is never written through
            fd = fsio.open_in(parent, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            fsio.reraise(exc, f"cannot create {path}")
        try:
            fsio.write_all(fd, data)
            if durable:
                os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)  # O_EXCL made it ours: a half-written file is removed, never published
            fsio.reraise(exc, f"cannot write {path}")
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ settings

    def settings(self) -> dict[str, Any]:
        """The spool's settings.

        ``max_queue`` (0 means unlimited), ``durable`` (fsync),
        ``max_input_bytes`` and ``max_response_bytes`` (absent: the defaults
        :data:`MAX_INPUT_BYTES`, :data:`MAX_RESPONSE_BYTES`), ``signed`` and
        ``key_id`` (see "Signed spools" above).
        """
        now = time.monotonic()
        if self._settings is None or now - self._settings[0] > CACHE_TTL:
            # read again each second by every busy process: the few system calls of fsio.read_file, not open()'s
            settings = json.loads(fsio.read_file(f"{self._root}/spool.json", follow=True))
            if "upgrading" in settings and not self._upgrading:
                raise SpoolError(
                    f"the spool at {self} is being upgraded to format {settings['upgrading']!r}, or its upgrade "
                    "was interrupted: run `spoolatp upgrade` (again) before anything else uses it"
                )
            layout = settings.get("format", 1)
            if type(layout) is not int or not 1 <= layout <= SPOOL_FORMAT:
                raise SpoolError(
                    f"the spool at {self} has format {layout!r}, which this spoolatp (format {SPOOL_FORMAT}) does "
                    "not know; install the spoolatp version that made it on this host"
                )
            self._settings = (now, settings)
        return self._settings[1]

    @property
    def journal_file(self) -> str:
        """The file of a task directory its journal lines are appended to: ``task`` (format 2) or ``journal`` (1).

        Read from the settings (each second): ``spoolatp upgrade`` changes it under running producers.
        """
        return "task" if self.settings().get("format", 1) >= 2 else "journal"

    @property
    def durable(self) -> bool:
        """Whether files are fsynced before they are published (setting ``durable``)."""
        try:
            return bool(self.settings().get("durable"))
        except FileNotFoundError:  # while the spool itself is being created
            return False

    def configure(
        self,
        *,
        max_queue: int | None = None,
        durable: bool | None = None,
        max_input_bytes: int | None = None,
        max_response_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Change settings stored in the spool, seen by every producer within a second."""
        self._settings = None
        current = dict(self.settings())
        if max_queue is not None:
            if not isinstance(max_queue, int) or max_queue < 0:
                raise ValueError(f"max_queue must be a whole number >= 0 (0 = unlimited), not {max_queue!r}")
            current["max_queue"] = max_queue
        if durable is not None:
            current["durable"] = bool(durable)
        for name, value in (("max_input_bytes", max_input_bytes), ("max_response_bytes", max_response_bytes)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be a whole number of bytes > 0, not {value!r}")
                current[name] = value
        self._write_json(self.path / "spool.json", current)
        self._settings = None
        return current

    def _limit(self, name: str, default: int, settings: dict[str, Any] | None = None) -> int:
        value = (settings or self.settings()).get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    # ------------------------------------------------------------------ signing

    def check_key(self) -> bool:
        """Whether the spool is signed; raise if this process's key does not fit it.

        :raises SigningKeyError: the spool is signed and this process has no
            key or another one, or it has a key and the spool is not signed.
        """
        return self._signing_key() is not None

    def _signing_key(self) -> bytes | None:
        """The key to sign and check with, None in an unsigned spool; checked before any task file is read."""
        settings = self.settings()
        signed, wanted = bool(settings.get("signed")), settings.get("key_id")
        if self._key is None:
            if signed:
                raise SigningKeyError(
                    f"the spool at {self} is signed (key id {wanted}) and this process has no key: set "
                    f"{KEY_ENV} to the path of the spool's key file (see docs/security.md)"
                )
            return None
        if not signed:
            raise SigningKeyError(
                f"this process has a key (id {self.key_id}, from {self.key_file}) but the spool at {self} is not "
                f"signed; sign it with `spoolatp --spool {self} init --key-file {self.key_file}`, or unset {KEY_ENV}"
            )
        if wanted != self.key_id:
            raise SigningKeyError(
                f"this host's key (id {self.key_id}, from {self.key_file}) does not match the spool's (id {wanted}) "
                f"at {self}; install the spool's key file on this host (see docs/security.md)"
            )
        return self._key

    def enable_signing(self) -> list[str]:
        """Make the spool signed with this process's key; return the task types it signed.

        Allowed while the spool holds no task (in any state): tasks written
        without a signature would be quarantined by every reader, and signing
        them now would vouch for content nobody checked. The registered task
        types are signed as they are (check them with ``spoolatp types``).
        Signing again with the key it already has changes nothing.

        :raises SigningKeyError: no key, or the spool holds tasks.
        """
        if self._key is None:
            raise SigningKeyError(f"no key to sign the spool at {self} with: pass key_file= or set {KEY_ENV}")
        self._settings = None
        current = dict(self.settings())
        if current.get("signed") and current.get("key_id") == self.key_id:
            return []
        held = max(len(fsio.listdir(self.path / "ids")), sum(self.counts().values()))
        if held:
            was = f"signed with key id {current.get('key_id')}" if current.get("signed") else "not signed"
            raise SigningKeyError(
                f"the spool at {self} holds {held} task(s) written while it was {was}; signing it now would have "
                "every reader quarantine them. Let them end and delete them (or wait for their retention), then "
                "sign the empty spool; see docs/security.md"
            )
        names = []
        for entry in sorted(
            fsio.listdir(self.path / "types")
        ):  # types first: a reader with the key never sees them unsigned
            if not entry.endswith(".json"):
                continue
            try:
                data = json.loads(fsio.read_file(self.path / "types" / entry))  # a FIFO there: OSError or b""
                if not isinstance(data, dict):
                    continue
            except (OSError, ValueError):
                continue
            name = decode_name(entry[:-5])
            data["hmac"] = type_mac(self._key, name, data)
            self._write_json(self.path / "types" / entry, data)
            names.append(name)
        current.update(signed=True, key_id=self.key_id)
        self._write_json(self.path / "spool.json", current)
        self._settings = None
        self._types.clear()
        return names

    # ------------------------------------------------------------------ task types

    def register_type(
        self,
        name: str,
        handler: str,
        timeout: float = 3600,
        timeret: float = -1,
        maxrestart: int = 2,
        options: dict[str, Any] | None = None,
        *,
        priority: int = DEFAULT_PRIORITY,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
    ) -> TaskType:
        """Create or replace a task type (an upsert every host sees)."""
        validate_id(name, "task type")
        if not isinstance(handler, str) or not handler.strip():
            raise ValueError(f"handler of task type {name!r} must be a handler name, not {handler!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout of task type {name!r} must be a number of seconds > 0, not {timeout!r}")
        if not isinstance(timeret, (int, float)):
            raise ValueError(f"timeret of task type {name!r} must be a number of seconds, not {timeret!r}")
        if not isinstance(maxrestart, int) or maxrestart < 0:
            raise ValueError(f"maxrestart of task type {name!r} must be a whole number >= 0, not {maxrestart!r}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options of task type {name!r} must be a dict, not {type(options).__name__}")
        try:
            json.dumps(options or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"options of task type {name!r} must be JSON-serialisable: {exc}") from None
        validate_priority(priority)
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries of task type {name!r} must be a whole number >= 0, not {retries!r}")
        if not isinstance(backoff, (int, float)) or not isinstance(backoff_max, (int, float)) or backoff < 0:
            raise ValueError(f"backoff of task type {name!r} must be a number of seconds >= 0, not {backoff!r}")
        if backoff_max < backoff:
            raise ValueError(f"backoff_max of task type {name!r} ({backoff_max}) is below its backoff ({backoff})")
        signer = self._signing_key()
        ttype = TaskType(
            name,
            handler.strip(),
            float(timeout),
            float(timeret),
            maxrestart,
            dict(options or {}),
            priority,
            retries,
            float(backoff),
            float(backoff_max),
        )
        data = ttype.to_json()
        if signer is not None:
            data["hmac"] = type_mac(signer, name, data)
        self._write_json(self.path / "types" / f"{encode_name(name)}.json", data)
        self._types.pop(name, None)
        return ttype

    def get_type(self, name: str) -> TaskType:
        """:raises UnknownTaskType: if no such type is registered."""
        now = time.monotonic()
        cached = self._types.get(name)
        if cached and now - cached[0] <= CACHE_TTL:
            return cached[1]
        validate_id(name, "task type")
        # only a process with a key acts on a type (enqueues, runs); one without may look at it unchecked
        signer = self._signing_key() if self._key is not None else None
        file = self.path / "types" / f"{encode_name(name)}.json"
        try:
            data = json.loads(fsio.read_file(file))  # a FIFO planted there reads as b"": not JSON, like garbage
            if signer is not None and not (
                isinstance(data, dict)
                and hmac.compare_digest(str(data.get("hmac")).encode(), type_mac(signer, name, data).encode())
            ):
                # its handler and options decide what runs: a forged type is as dangerous as a forged task
                why = "signature mismatch" if isinstance(data, dict) and "hmac" in data else "unsigned"
                self._quarantine(file, f"task type file {why} (forged, altered, or written without the key)")
                raise UnknownTaskType(name, self)
            ttype = TaskType(
                **{k: data[k] for k in ("name", "handler", "timeout", "timeret", "maxrestart")},
                options=dict(data.get("options") or {}),
                **{k: data[k] for k in ("priority", "retries", "backoff", "backoff_max") if k in data},
            )
        except FileNotFoundError:
            raise UnknownTaskType(name, self) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnknownTaskType(name, self) from exc
        except OSError as exc:
            if exc.errno == errno.EAGAIN:  # a FIFO whose writer holds it open (see fsio.read_file): no type either
                raise UnknownTaskType(name, self) from exc
            if exc.errno != errno.ELOOP:
                raise
            self._quarantine(file, "a symbolic link, never followed")
            raise UnknownTaskType(name, self) from None
        self._types[name] = (now, ttype)
        return ttype

    def types(self) -> list[TaskType]:
        out = []
        for entry in sorted(os.listdir(self.path / "types")):
            if entry.endswith(".json") and not entry.startswith("."):
                with contextlib.suppress(UnknownTaskType, ValueError):
                    out.append(self.get_type(decode_name(entry[:-5])))
        return out

    # ------------------------------------------------------------------ producer

    def enqueue(
        self,
        type_id: str,
        task_id: str,
        input: Any = None,
        message: str = "",
        *,
        priority: int | None = None,
        not_before: datetime | float | None = None,
    ) -> str:
        """Add a task; return its key.

        :param priority: 0..9, higher first; default: the type's.
        :param not_before: a :class:`~datetime.datetime` (naive means local
            time), or seconds from now: the task is ENQUEUED but not dequeued
            before then, judged by the spool's clock.
        :raises ValueError: bad identifier, priority or time. :raises UnknownTaskType:
        :raises TaskExists: the pair is taken. :raises QueueFull: the limit is reached.
        :raises TypeError: the input cannot be pickled.
        :raises TaskTooLarge: the pickled record exceeds the setting ``max_input_bytes``.
        :raises SigningKeyError: this process's key does not fit the spool's signing.
        :raises StorageError: the file system is full or read-only; nothing was enqueued.
        """
        if type(type_id) is not str or type_id not in self._types:  # a cached type's name was checked already
            validate_id(type_id, "task type")
        validate_id(task_id, "task id")
        signer = self._signing_key()  # before anything is written: a producer without the spool's key writes nothing
        ttype = self.get_type(type_id)
        priority = validate_priority(ttype.priority if priority is None else priority)
        now = self.clock()
        due = _due(not_before, now)
        key = make_key(type_id, task_id, int(now * 1e9), priority)
        record = {
            "type": type_id,
            "id": task_id,
            "input": input,
            "enqueued": now,
            "message": str(message),
            "slot": None,
        }
        try:
            payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"input of task {type_id!r}/{task_id!r} cannot be pickled: {exc}") from exc
        settings = self.settings()
        max_input = self._limit("max_input_bytes", MAX_INPUT_BYTES, settings)
        durable = bool(settings.get("durable"))
        if len(payload) > max_input:  # refused before anything is written
            what = f"the input of task {type_id!r}/{task_id!r} (pickled)"
            raise TaskTooLarge(what, len(payload), max_input, "max_input_bytes", self)
        dirs = self._dirs
        name = f"{dirs['ids']}/{key[18:]}"  # <TYPE>~<ID> as the key spells them
        # a random part: two enqueues of one id in the same nanosecond (one of which then loses at the id link)
        tmp = f"{dirs['tmp']}/enq~{random.getrandbits(32):08x}~{key}"
        reserved = False
        slot = None
        try:
            # tmp/ first: if this process dies after reserving the id, a sweep finds the enq~ entry and frees the id
            os.mkdir(tmp, 0o770)
            self._link(key, name, lambda: TaskExists(type_id, task_id, self))
            reserved = True
            limit = int(settings.get("max_queue") or 0)
            if limit > 0:
                record["slot"] = slot = self._take_slot(key, limit)
                payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
                if len(payload) > max_input:  # the slot number made it a few bytes longer
                    what = f"the input of task {type_id!r}/{task_id!r} (pickled)"
                    raise TaskTooLarge(what, len(payload), max_input, "max_input_bytes", self)
            self._write_in(tmp, "task", seal(TASK_MAGIC, payload, key=signer, bind=key), durable)
            dest = f"{dirs['enqueued']}/{key}" if due is None else f"{dirs['delayed']}/{int(due * 1e9):016x}~{key}"
            if not fsio.move(tmp, dest, proof="src"):  # publish: whole or not at all
                raise FileNotFoundError(f"{tmp} vanished before it was published (swept as a crash leftover?)")
            if durable:  # the rename itself survives a power loss only once its directory is on disk
                fsio.fsync_dir(os.path.dirname(dest))
                fsio.fsync_dir(dirs["ids"])
        except BaseException as exc:
            # undo; on a read-only file system the undo may fail too: what it leaves in tmp/ (with the id it
            # reserved) is never visible as a task, and a sweep of tmp/ frees it
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                if slot is not None:
                    self._unlink_if_points(f"{dirs['slots']}/{slot}", key)
            with contextlib.suppress(OSError):
                if reserved:
                    self._unlink_if_points(name, key)
            if isinstance(exc, OSError):
                fsio.reraise(
                    exc, f"cannot enqueue task {type_id!r}/{task_id!r} in the spool at {self}; nothing was enqueued"
                )
            raise
        self._emit("enqueued", type_id=type_id, task_id=task_id, key=key)
        return key

    def _link(self, key: str, path: fsio.PathArg, exists: Callable[[], Exception]) -> None:
        """Create symlink ``path`` whose text is ``key``: atomic, fails if it exists (NFS too)."""
        try:
            os.symlink(key, path)
        except FileExistsError:
            # NFS: a retransmitted SYMLINK whose first try succeeded reports EEXIST; the text tells
            if self._readlink(path) != key:
                raise exists() from None
        except PermissionError:
            # sshfs reports EPERM where EEXIST is meant
            if self._readlink(path) is None:
                raise
            if self._readlink(path) != key:
                raise exists() from None

    @staticmethod
    def _readlink(path: fsio.PathArg) -> str | None:
        try:
            return os.readlink(path)
        except (FileNotFoundError, OSError):
            return None

    def _unlink_if_points(self, path: fsio.PathArg, key: str) -> None:
        if self._readlink(path) == key:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _take_slot(self, key: str, limit: int) -> int:
        slots = self._dirs["slots"]
        taken = {int(n) for n in os.listdir(slots) if n.isdigit()}
        free = [n for n in range(limit) if n not in taken]
        random.shuffle(free)
        for n in free:
            try:
                os.symlink(key, f"{slots}/{n}")  # atomic: one winner per slot
                return n
            except FileExistsError:
                continue
        raise QueueFull(self, limit)

    # ------------------------------------------------------------------ finding tasks

    def _key_of(self, type_id: str, task_id: str) -> str:
        validate_id(type_id, "task type")
        validate_id(task_id, "task id")
        link = self.path / "ids" / f"{encode_name(type_id)}~{encode_name(task_id)}"
        key = self._readlink(link)
        if key is None:
            raise TaskNotFound(type_id, task_id, self)
        try:
            if parse_key(key) != (type_id, task_id):
                raise ValueError(key)
        except ValueError:  # a planted link, e.g. to ../../etc: its text never becomes a path
            self._quarantine(link, f"link text {key[:200]!r} is not the key of task {type_id!r}/{task_id!r}")
            raise TaskNotFound(type_id, task_id, self) from None
        return key

    def _locate(self, key: str) -> tuple[Path, State, str | None]:
        """Find a task directory by key; retries briefly because a move may be in flight."""
        for delay in (0, 0.001, 0.005, 0.02, 0.05, 0.1):
            if delay:
                time.sleep(delay)
            # lstat, never stat: a link in place of a task directory is never followed (see "Links")
            for state in (State.ENQUEUED, State.FINISHED, State.FAILED):
                path = self.path / DIR_OF[state] / key
                if fsio.real_dir(path):
                    return path, state, None
            for state in (State.RUNNING, State.SCHEDULED):
                base = self.path / DIR_OF[state]
                for server in os.listdir(base):
                    path = base / server / key
                    if fsio.real_dir(base / server) and fsio.real_dir(path):
                        return path, state, server
            for entry in fsio.listdir(self.path / "delayed"):  # few, usually: only delayed tasks are listed here
                if (
                    entry.endswith("~" + key)
                    and entry.partition("~")[2] == key
                    and fsio.real_dir(self.path / "delayed" / entry)
                ):
                    return self.path / "delayed" / entry, State.ENQUEUED, None
        raise FileNotFoundError(key)

    def _find(self, type_id: str, task_id: str) -> tuple[Path, State, str | None, str]:
        key = self._key_of(type_id, task_id)
        try:
            return (*self._locate(key), key)
        except FileNotFoundError:
            raise TaskNotFound(type_id, task_id, self) from None

    def status(self, type_id: str, task_id: str) -> State:
        """:raises TaskNotFound:"""
        return self._find(type_id, task_id)[1]

    def info(self, type_id: str, task_id: str) -> TaskInfo:
        path, state, server, key = self._find(type_id, task_id)
        return self._info(path, state, server, key)

    def _info(self, path: Path, state: State, server: str | None, key: str) -> TaskInfo:
        type_id, task_id = parse_key(key)
        journal = self._journal(path)
        attempts = sum(1 for r in journal if r.state is State.SCHEDULED)
        restarts = _last(journal, "restart")
        progress = [r for r in journal if r.progress is not None]
        enqueued = key_time(key)
        not_before = None
        if path.parent.name == "delayed":
            not_before = int(path.name.partition("~")[0], 16) / 1e9
        cancel = None
        if state in (State.SCHEDULED, State.RUNNING):
            cancel = self._cancel_marker(path)
        return TaskInfo(
            type_id,
            task_id,
            key,
            state,
            server,
            attempts,
            restarts,
            enqueued,
            journal[-1].time if journal else enqueued,
            progress[-1].progress if progress else None,
            progress[-1].message if progress else None,
            key_priority(key),
            not_before,
            cancel,
        )

    def log(self, type_id: str, task_id: str) -> list[LogRecord]:
        """The task's history, oldest first: its enqueue, then every journal entry."""
        for _ in range(10):
            path, _, _, key = self._find(type_id, task_id)
            try:
                record = self._read_record(path, key)
            except FileNotFoundError:  # it moved to its next state meanwhile: find it again
                continue
            except (CorruptTaskFile, SigningKeyError):
                raise
            except Exception:  # an input of a class this process lacks: the key has the enqueue time
                record = {"enqueued": key_time(key)}
            journal = self._journal(path)
            if not os.path.isdir(path):  # the journal was read after a move, maybe not at all
                continue
            first = LogRecord(record["enqueued"], State.ENQUEUED, record.get("message") or "enqueued")
            return [first, *journal]
        raise TaskNotFound(type_id, task_id, self)

    def response(self, type_id: str, task_id: str) -> tuple[Any, str]:
        """Return ``(response, mime_type)`` as the handler stored it.

        :raises ResponseNotFound: the handler stored none.
        """
        signer = self._signing_key()
        for _ in range(10):
            path, _, _, key = self._find(type_id, task_id)
            try:
                data = fsio.read_file(path / "response")
                break
            except FileNotFoundError:
                if os.path.isdir(path):
                    raise ResponseNotFound(f"task {type_id!r}/{task_id!r} has stored no response") from None
                # the task moved to its next state between finding it and opening its response: find it again
            except BlockingIOError:  # a FIFO a writer holds open (see fsio.read_file): damaged, as an empty file is
                data = b""
                break
        else:
            raise TaskNotFound(type_id, task_id, self)
        try:
            if not data and (odd := fsio.not_regular(path / "response")):  # a FIFO planted there reads as b""
                raise CorruptTaskFile(path / "response", f"response is {odd}, not a regular file (planted?)")
            payload, meta = unseal(RESPONSE_MAGIC, data, path / "response", key=signer, bind=key)
            info = json.loads(meta or "{}")
            if not isinstance(info, dict):
                raise CorruptTaskFile(path / "response", "its metadata is not a JSON object")
        except ValueError as exc:  # CorruptTaskFile, or metadata that is not JSON
            reason = exc.reason if isinstance(exc, CorruptTaskFile) else f"metadata is not JSON: {exc}"
            self._quarantine(path / "response", reason)  # aside, with the reason; the task itself stays
            raise exc if isinstance(exc, CorruptTaskFile) else CorruptTaskFile(path / "response", reason) from None
        body: Any = payload.decode("utf-8") if info.get("kind") == "str" else payload
        return body, str(info.get("mime", "application/octet-stream"))

    def delete(self, type_id: str, task_id: str) -> None:
        """Remove a task in any state; a consumer still holding it loses its claim."""
        for _ in range(10):
            path, _, _, key = self._find(type_id, task_id)
            grave = self.path / "tmp" / f"del~{secrets.token_hex(4)}~{key}"
            try:
                # the task vanishes from every state at once, and fences its holder
                if not fsio.move(path, grave, proof="dst"):
                    continue  # it moved to its next state meanwhile: find it again
            except NotADirectoryError:
                continue
            self._bury(grave, key)
            return
        raise TaskNotFound(type_id, task_id, self)

    def _bury(self, grave: Path, key: str) -> None:
        # a damaged task file, or an input whose class this process cannot import, must not stop
        # a delete; a slot it leaves behind is freed by sweep_tmp
        with contextlib.suppress(Exception):
            record = self._read_record(grave, key, quarantine=False)  # refuses a link planted in its place
            if record.get("slot") is not None:
                self._unlink_if_points(self.path / "slots" / str(record["slot"]), key)
        self._release_id(key)
        for _ in range(3):
            fsio.remove(grave)
            # a holder's call that looked up the task's old path just before our rename still lands in the
            # directory (the kernel resolves the path first, then works in its inode, wherever that is now) and
            # may add an entry as the removal lists it; its next call through that path fails
            if not os.path.lexists(grave):
                break

    def _release_id(self, key: str, files_to: Path | None = None) -> None:
        """Free the (type, id) of task ``key``; its files are removed, or moved to ``files_to``."""
        type_id, task_id = parse_key(key)
        name = f"{encode_name(type_id)}~{encode_name(task_id)}"
        if self._readlink(self.path / "ids" / name) == key:  # files/ first: the id may be reused once ids/ is gone
            if files_to is None:
                fsio.remove(self.path / "files" / name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path / "files" / name, files_to)
        self._unlink_if_points(self.path / "ids" / name, key)

    def files_dir(self, type_id: str, task_id: str) -> Path:
        """Where a task keeps files it owns (removed when the task is deleted or retired)."""
        return (
            self.path
            / "files"
            / f"{encode_name(validate_id(type_id, 'task type'))}~{encode_name(validate_id(task_id, 'task id'))}"
        )

    # ------------------------------------------------------------------ daemons

    def beat(self, server: str, info: dict[str, Any]) -> None:
        """Write daemon ``server``'s heartbeat (its info plus the time) to ``daemons/``.

        The one write of an idle daemon, every few seconds: on a host whose caches go cold between
        wake-ups, every line run here costs far more than it would warm, so the file is written by the
        shortest path (json's cached C encoder; ``indent`` would fall back to the Python one).
        """
        name = self._beat_names.get(server)
        if name is None:
            validate_id(server, "server id")
            name = self._beat_names[server] = f"{encode_name(server)}.json"
        obj = {**info, "server": server, "beat": self.clock()}
        # the settings as last read (a sweep reads them again): durable or not, a heartbeat is rewritten soon
        durable = bool(self._settings[1].get("durable")) if self._settings is not None else self.durable
        # json.dumps' own arguments only: any other builds a new encoder per call
        self._write_json_as(f"{self._dirs['daemons']}/{name}", name, json.dumps(obj), durable)

    def daemons(self) -> list[dict[str, Any]]:
        """Heartbeats of the daemons that work or worked on this spool, newest first."""
        out = []
        for entry in fsio.listdir(self.path / "daemons"):
            try:
                with open(self.path / "daemons" / entry, "rb", opener=fsio.nofollow) as f:
                    data = json.loads(f.read() or b"")  # None: a FIFO whose writer holds it open (O_NONBLOCK)
                    seen = os.fstat(f.fileno()).st_mtime  # stamped by the file server: immune to the writer's skew
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                out.append({**data, "seen": seen})
        return sorted(out, key=lambda d: -float(d.get("beat", 0)))

    def forget_daemon(self, server: str) -> None:
        validate_id(server, "server id")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / "daemons" / f"{encode_name(server)}.json")

    def tasks(self, state: State | None = None, type_id: str | None = None) -> Iterator[TaskInfo]:
        """Every task (optionally of one state and type), oldest first within a state."""
        states = [state] if state is not None else list(State)
        for st in states:
            base = self.path / DIR_OF[st]
            entries: list[tuple[Path, str | None, str]]
            if st in (State.SCHEDULED, State.RUNNING):
                servers = [
                    s for s in fsio.listdir(base) if fsio.real_dir(base / s)
                ]  # a planted link is not listed through
                entries = [(base / s / k, s, k) for s in servers for k in fsio.listdir(base / s)]
            else:
                entries = [(base / k, None, k) for k in fsio.listdir(base)]
            if st is State.ENQUEUED:
                delayed = self.path / "delayed"
                entries += [(delayed / e, None, e.partition("~")[2]) for e in fsio.listdir(delayed)]
            for path, server, key in sorted(entries, key=lambda e: e[2]):
                try:
                    t, _ = parse_key(key)
                except ValueError:
                    continue
                if type_id is not None and t != type_id:
                    continue
                if not fsio.real_dir(path):  # a link or file in place of a task directory: never read through
                    continue
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    yield self._info(path, st, server, key)

    def counts(self) -> dict[str, int]:
        out = {s.name: 0 for s in State}
        for st in State:
            base = self.path / DIR_OF[st]
            if st in (State.SCHEDULED, State.RUNNING):
                out[st.name] = sum(len(fsio.listdir(base / s)) for s in fsio.listdir(base) if fsio.real_dir(base / s))
            else:
                out[st.name] = len(fsio.listdir(base))
        out["ENQUEUED"] += len(fsio.listdir(self.path / "delayed"))
        return out

    # ------------------------------------------------------------------ consumer

    def claim(
        self,
        server: str,
        *,
        accept: Callable[[str], bool] | None = None,
        limit: int = 1,
        message: str = "",
        serial: contextlib.AbstractContextManager[Any] | None = None,
    ) -> list[Claim]:
        """Dequeue up to ``limit`` tasks, most urgent and oldest first: ENQUEUED -> SCHEDULED.

        ``accept(type_id)`` restricts the claim to types this consumer can run.
        ``serial``: a lock held around each claim's rename, which processes that
        claim with the same ``server`` at the same time must share on a network
        file system (see :meth:`_claim_proven`); a local one needs none.
        The queue is listed once and the sorted list is reused by later calls,
        so the cost per task does not grow with the queue (see "Order" above
        for when it is listed again). Delayed tasks that are due are promoted.

        :raises QueueEmpty: nothing (acceptable) is waiting.
        """
        return [claim for claim, _ in self._take(server, accept, limit, message, serial, start=False)]

    def claim_and_start(
        self,
        server: str,
        *,
        accept: Callable[[str], bool] | None = None,
        message: str = "",
        serial: contextlib.AbstractContextManager[Any] | None = None,
    ) -> tuple[Claim, StartedTask | None]:
        """Dequeue the next task and start it in one step: ENQUEUED -> RUNNING, for a consumer that runs it at once.

        What :meth:`claim` then :meth:`start` do, with one rename instead of two and both journal
        records (SCHEDULED, then RUNNING) in one append: the task's history is the same, it only never
        sits in ``scheduled/``. The daemon's workers dequeue this way. The claim is ended with
        :meth:`finish`, :meth:`fail` and the rest, as any other.

        Returns the claim and what :meth:`start` would return, or None in its place when the task's
        type is not registered or its input cannot be unpickled here: :meth:`start` on the claim then
        raises why, for the consumer to report as it reports any failed start.

        :raises QueueEmpty: nothing (acceptable) is waiting.
        """
        return self._take(server, accept, 1, message, serial, start=True)[0]

    def _take(
        self,
        server: str,
        accept: Callable[[str], bool] | None,
        limit: int,
        message: str,
        serial: contextlib.AbstractContextManager[Any] | None,
        *,
        start: bool,
    ) -> list[tuple[Claim, StartedTask | None]]:
        """Rename up to ``limit`` tasks from ``enqueued/`` into ``scheduled/SERVER/`` (with ``start``: running/)."""
        made = self._running_dirs if start else self._server_dirs
        if server not in made:  # a server named there was validated already
            validate_id(server, "server id")
        self._signing_key()  # before a task moves: a consumer without the spool's key must not strand one
        enqueued = self._dirs["enqueued"]
        sdir = f"{self._dirs['running' if start else 'scheduled']}/{server}"
        if server not in made:
            Path(sdir).mkdir(mode=0o770, exist_ok=True)
            fsio.check_real_dir(sdir)
            made.add(server)
        claims: list[tuple[Claim, StartedTask | None]] = []
        refreshed = False
        while len(claims) < limit:
            if not refreshed and (not self._candidates or self._listing_stale()):
                self._relist()
                refreshed = True
                continue
            if not self._candidates:
                break
            key = self._candidates.pop()
            try:
                ids = parse_key(key)
            except ValueError:
                self._quarantine(f"{enqueued}/{key}", "name is not a task key")
                continue
            if accept is not None and not accept(ids[0]):
                continue
            path = f"{sdir}/{key}"
            try:
                if self._local:
                    # the claim: of racing consumers exactly one rename wins; the loser's source is gone, and a
                    # local file system's ENOENT says just that (nothing to prove: no lock, no listing)
                    if not fsio.move(f"{enqueued}/{key}", path, proof=None):
                        continue
                elif not self._claim_proven(enqueued, sdir, key, serial):
                    continue
            except (FileExistsError, OSError) as exc:  # ENOTEMPTY: a leftover of a crashed run of this server id
                # ENOTDIR, EISDIR: a file planted where the task would go; the task waits, the others flow
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    raise
                continue
            try:
                claim = self._claimed(path, server, key, message, ids, start=start)
            except (OSError, ClaimLost) as exc:
                # its SCHEDULED record could not be written, or its journal read (a flaky network mount): give
                # it back rather than hold a task nobody knows it holds; if even that fails, the zombie sweep
                # finds it
                log.warning("claim of %s by %s not recorded (%s); giving it back", key, server, exc)
                with contextlib.suppress(OSError, SpoolError):
                    self._give_back(server, key, f"claim by {server} not recorded ({exc})")
                continue
            if claim is not None:
                claims.append(claim)
            elif fsio.listed(sdir, key):
                # "gone" was a false answer of a lookup (GlusterFS, just after the rename); a readdir says it is
                # here: give it back rather than leave it in scheduled/ with no owner until its timeout
                with contextlib.suppress(OSError, SpoolError):
                    self._give_back(server, key, f"claim by {server} lost track of it after a false error")
        if not claims:
            raise QueueEmpty(f"no task waiting in the spool at {self}")
        return claims

    def _listing_stale(self) -> bool:
        """Whether the cached listing of the queue should be refreshed before the next claim."""
        age = time.monotonic() - self._listed
        if age > max(CACHE_TTL, 20 * self._list_cost):  # a task re-enqueued elsewhere goes back in front
            return True
        if age < max(0.05, 20 * self._list_cost):  # listing costs at most a twentieth of the time
            return False
        return fsio.mtime_ns(self._dirs["enqueued"]) != self._listed_mtime  # something arrived (or left)

    def _relist(self) -> None:
        self.promote_due()
        started = time.monotonic()
        # mtime before listing: a change during it is seen next time
        self._listed_mtime = fsio.mtime_ns(self._dirs["enqueued"])
        self._candidates = sorted(fsio.listdir(self._dirs["enqueued"]), reverse=True)
        self._listed = time.monotonic()
        self._list_cost = self._listed - started

    @staticmethod
    def _claim_proven(
        enqueued: str, sdir: str, key: str, serial: contextlib.AbstractContextManager[Any] | None
    ) -> bool:
        """Rename ``enqueued/key`` into ``sdir`` on a network file system; whether this call moved it.

        :raises OSError: as the rename did (EEXIST, ENOTEMPTY: a leftover of a crashed run of this server id)
        """
        # the claim: of racing consumers exactly one rename wins; the loser's source is gone. An ENOENT
        # answer (NFS: a retransmitted rename) hid our success if the task is now in our directory,
        # which proves it only if no one else put it there: consumers sharing a server id hold
        # ``serial`` and look first, so no one else can have put it there between the look and ours
        with serial or contextlib.nullcontext():
            # a readdir, the same evidence fsio.move's proof uses (a lookup may miss what a rename just
            # brought here); None: the directory could not be listed, so nothing would prove the claim
            if serial is not None:
                held = fsio.names_or_none(sdir)
                if held is None or key in held:
                    return False  # another consumer of this server id holds it (or nothing could prove ours)
            return fsio.move(f"{enqueued}/{key}", f"{sdir}/{key}", proof="dst")

    def promote_due(self) -> float | None:
        """Move delayed tasks that are due into ``enqueued/``; return when the next one is due."""
        now = self.clock()
        for entry in sorted(fsio.listdir(self.path / "delayed")):
            due, _, key = entry.partition("~")
            try:
                when = int(due, 16) / 1e9
                parse_key(key)
            except ValueError:
                self._quarantine(self.path / "delayed" / entry, "name is not <16 hex digits>~<task key>")
                continue
            if when > now:
                return when
            # several promoters may race: one rename wins, and either way the task is where it belongs
            fsio.move(self.path / "delayed" / entry, self.path / "enqueued" / key, proof="dst")
            self._listed = 0.0
        return None

    def _claimed(
        self, path: str, server: str, key: str, message: str, ids: tuple[str, str], *, start: bool = False
    ) -> tuple[Claim, StartedTask | None] | None:
        """Record the claim of the task just renamed to ``path``; with ``start`` (into running/), its start too."""
        inline = self.journal_file == "task"
        fd = None
        if inline and self._local:
            # one descriptor for the read and the append (two system calls fewer; _append fences the write with
            # an lstat); opening the directory O_DIRECTORY|O_NOFOLLOW refuses what the lstat below refuses
            with contextlib.suppress(OSError):  # gone, planted or unreadable: the careful way below judges
                fd = fsio.open_in(path, "task", os.O_RDWR | os.O_APPEND)
        try:
            return self._record_claim(path, server, key, message, ids, start, inline, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _record_claim(
        self,
        path: str,
        server: str,
        key: str,
        message: str,
        ids: tuple[str, str],
        start: bool,
        inline: bool,
        fd: int | None,
    ) -> tuple[Claim, StartedTask | None] | None:
        """:meth:`_claimed`, through ``fd`` (its task file, opened read-write) if it is not None."""
        if fd is None:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:  # deleted right after our rename
                return None
            if not stat.S_ISDIR(mode):  # a planted file or symlink: never follow it
                self._quarantine(path, "not a task directory (plain file or symlink in a state directory)")
                return None
        if not inline:
            # an unreadable journal must not count as no attempt (an attempt number used twice would let one
            # holder take another's terminal record for its own): the OSError makes claim() give the task back
            journal = self._journal_data(path, settle=True, strict=True)
        read: list[bytes] = []  # format 2: the task file as read, record and journal in one read
        try:
            # after our rename, the lstat above (or opening fd, O_DIRECTORY|O_NOFOLLOW) checked it is a directory;
            # remembered for start(), unless this claim starts the task itself and start() never reads it
            record = self._read_record(path, key, is_dir=True, remember=not start, read=read, fd=fd)
        except CorruptTaskFile:
            return None
        except OSError:
            if os.path.isdir(path):  # there but unreadable for now: claim() gives it back
                raise
            return None  # deleted right after our rename
        except Exception:  # an input of a class this process lacks: start() raises it for the consumer to report
            record = {}  # and sweep_tmp frees its slot
        if inline:
            if not read:  # failed before the task file was read: the attempt cannot be counted, claim() gives it back
                raise OSError(errno.EIO, f"task file of {key} not read")
            try:
                journal = read[0][journal_offset(read[0]) :]
            except ValueError:  # a header that does not parse, of a task whose input this process cannot unpickle
                journal = b""
        attempt = _count_state(journal, State.SCHEDULED) + 1
        if record.get("slot") is not None:
            self._unlink_if_points(f"{self._dirs['slots']}/{record['slot']}", key)
        claim = Claim(self._root, server, key, attempt)
        claim.__dict__["_ids"] = ids  # Claim._ids (a cached_property): claim() parsed the key already
        self._remember_valid(server, key, ids)  # both names were checked by claim()
        started: StartedTask | None = None
        if start:
            with contextlib.suppress(UnknownTaskType, OSError, SpoolError):  # start() raises it for the consumer
                if record:
                    handler = self.get_type(record["type"]).handler
                    started = StartedTask(record["type"], record["id"], handler, record["input"])
        size = len(read[0]) if inline else len(journal)  # of the file the journal lines are appended to
        self._hold(claim, path, State.RUNNING if start else State.SCHEDULED, size)
        try:
            # started: both records in one append, the directory being in running/ already
            then = (State.RUNNING, "started") if started is not None else None
            self._append(path, State.SCHEDULED, message or f"scheduled on {server}", claim, then=then, fd=fd)
        except (ClaimLost, CorruptTaskFile):  # deleted right after our rename, or quarantined (a FIFO as journal)
            self._held.pop((server, key, attempt), None)
            return None
        if started is not None:
            self._emit("started", type_id=ids[0], task_id=ids[1], key=key, attempt=attempt)
        return claim, started

    def _check_claim(self, claim: Claim) -> tuple[str, str]:
        """Refuse a claim whose server or key could lead out of the spool; return the key's (type, id).

        Each (server, key) is checked once per Spool: they are strings, so a checked pair stays good.

        :raises ValueError:
        """
        server, key = claim.server, claim.key
        if type(server) is str and type(key) is str:  # anything else is refused below, never looked up
            ids = self._valid.get((server, key))
            if ids is not None:
                return ids
        validate_id(server, "server id")
        ids = parse_key(key)
        self._remember_valid(server, key, ids)
        return ids

    def _remember_valid(self, server: str, key: str, ids: tuple[str, str]) -> None:
        if len(self._valid) >= 4096:  # a bound, not a cache policy: the claims in use are checked again
            self._valid.clear()
        self._valid[(server, key)] = ids

    def _claim_path(self, claim: Claim, *, scheduled_first: bool = False) -> tuple[str, State]:
        """The directory of the task this claim holds, and its state.

        ``scheduled_first`` looks in scheduled/ before running/ (start(), where the task is expected).

        :raises ClaimLost:
        """
        self._check_claim(claim)
        server, key = claim.server, claim.key
        held = self._held.get((server, key, claim.attempt))
        if held is not None:
            path, state, size = held
            try:
                st = os.lstat(f"{path}/{self.journal_file}")
            except OSError:
                st = None
            # a task taken from this attempt left this path (a reaper or a delete renames it away first), and
            # one claimed into it again has one SCHEDULED line more (a journal only grows): at the size this
            # attempt left it, it is this attempt's; a local file system answers lstat from the truth, a
            # network one maybe from a stale cache, which is why only local spools remember claims here
            if (
                st is not None
                and st.st_size == size
                and stat.S_ISREG(st.st_mode)
                and fsio.real_dir(path)
                and fsio.real_dir(path[: path.rfind("/")])
            ):
                return path, state
            self._held.pop((server, key, claim.attempt), None)  # a thread of the same handler may have dropped it
        for state in _HELD_SCHEDULED_FIRST if scheduled_first else _HELD:
            base = f"{self._dirs[DIR_OF[state]]}/{server}"
            path = f"{base}/{key}"
            if fsio.real_dir(path) and fsio.real_dir(base):
                # the same server may hold a later attempt of this task: the path alone is no proof
                if self._attempts(path, settle=True) != claim.attempt:
                    break
                return path, state
        raise ClaimLost(
            f"task {claim} is no longer held by server {claim.server!r}: it was re-enqueued "
            "as abandoned, deleted or retired; this change is discarded"
        )

    def _own_terminal(self, claim: Claim) -> tuple[str, State] | None:
        """The task's terminal directory if this very attempt ended it, else None."""
        self._check_claim(claim)
        for state in (State.FINISHED, State.FAILED):
            path = f"{self._dirs[DIR_OF[state]]}/{claim.key}"
            if fsio.real_dir(path):
                end = _last_end(self._journal_data(path, settle=True))
                if end is not None and end.server == claim.server and end.attempt == claim.attempt:
                    return path, state
        return None

    def _held_or_ended(self, claim: Claim) -> str:
        """The task's directory while this attempt holds it, or after this attempt ended it.

        :raises ClaimLost: neither.
        """
        try:
            return self._claim_path(claim)[0]  # held: then it is in no terminal directory
        except ClaimLost:
            own = self._own_terminal(claim)
            if own is None:
                raise
            return own[0]

    def start(self, claim: Claim, message: str = "") -> StartedTask:
        """SCHEDULED -> RUNNING; return the task's type, id, handler name and input.

        :raises ClaimLost: the task was taken from this consumer.
        :raises CorruptTaskFile: the task file failed validation (it is quarantined).
        """
        type_id, task_id = self._check_claim(claim)
        path, state = self._claim_path(claim, scheduled_first=True)
        if state is State.SCHEDULED:
            rdir = f"{self._dirs['running']}/{claim.server}"
            # lstat, never stat: running/SERVER must be a directory itself, not a link planted in its place
            if claim.server not in self._running_dirs or not fsio.real_dir(rdir):
                Path(rdir).mkdir(mode=0o770, exist_ok=True)
                fsio.check_real_dir(rdir)
                self._running_dirs.add(claim.server)
            dest = f"{rdir}/{claim.key}"
            if not fsio.move(path, dest, proof="dst"):  # fails if a reaper fenced the claim first
                raise ClaimLost(f"task {claim} was taken from server {claim.server!r} before it started")
            path = dest
            held = self._held.get((claim.server, claim.key, claim.attempt))
            if held is not None:  # the rename moved the journal with its directory, unchanged
                self._held[(claim.server, claim.key, claim.attempt)] = (dest, State.RUNNING, held[2])
        try:
            record = self._read_record(path, claim.key)
        except FileNotFoundError:  # fenced between our rename and this read
            raise ClaimLost(f"task {claim} was taken from server {claim.server!r} before it started") from None
        ttype = self.get_type(record["type"])
        self._append(path, State.RUNNING, message or "started", claim)
        self._emit("started", type_id=type_id, task_id=task_id, key=claim.key, attempt=claim.attempt)
        return StartedTask(record["type"], record["id"], ttype.handler, record["input"])

    def note(self, claim: Claim, message: str, progress: float | None = None) -> None:
        """Add a log message (and optionally a progress fraction 0..1) to a held task."""
        if progress is not None and not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be a fraction between 0 and 1, not {progress!r}")
        self._append(self._held_or_ended(claim), None, str(message), claim, progress=progress)

    def store_response(self, claim: Claim, response: str | bytes, mime_type: str = "text/xml") -> None:
        """Store the task's response; allowed until and after this attempt ends it."""
        if isinstance(response, str):
            payload, kind = response.encode("utf-8"), "str"
        elif isinstance(response, (bytes, bytearray, memoryview)):
            payload, kind = bytes(response), "bytes"
        else:
            raise TypeError(f"response of task {claim} must be str or bytes, not {type(response).__name__}")
        signer = self._signing_key()
        max_response = self._limit("max_response_bytes", MAX_RESPONSE_BYTES)
        if len(payload) > max_response:  # refused before anything is written
            raise TaskTooLarge(f"the response of task {claim}", len(payload), max_response, "max_response_bytes", self)
        path = self._held_or_ended(claim)
        _check_lease(claim)  # just before the write: a late response must not replace another attempt's
        meta = json.dumps({"mime": str(mime_type), "kind": kind}, separators=(",", ":"))
        tmp = f"{path}/.response~{secrets.token_hex(4)}"
        try:
            self._write_new(tmp, seal(RESPONSE_MAGIC, payload, meta, key=signer, bind=claim.key))
            os.replace(tmp, f"{path}/response")  # same directory: fails if a reaper moved it meanwhile
        except (FileNotFoundError, NotADirectoryError):
            raise ClaimLost(f"task {claim} was taken from server {claim.server!r}; its response is discarded") from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            fsio.reraise(exc, f"cannot store the response of task {claim} in the spool at {self}")

    def finish(self, claim: Claim, message: str = "") -> None:
        """End this attempt as FINISHED. :raises ClaimLost:"""
        self._end(claim, State.FINISHED, message or "finished")

    def fail(self, claim: Claim, message: str = "") -> None:
        """End this attempt as FAILED. :raises ClaimLost:"""
        self._end(claim, State.FAILED, message or "failed")

    def finish_if_not_done(self, claim: Claim, message: str = "") -> bool:
        """FINISHED unless this attempt already ended the task; return whether it changed anything."""
        return self._end(claim, State.FINISHED, message or "finished", unless_ended=True)

    def ended(self, claim: Claim) -> State | None:
        """The terminal state this attempt gave its task, if any."""
        own = self._own_terminal(claim)
        return own[1] if own else None

    def _end(self, claim: Claim, state: State, message: str, *, unless_ended: bool = False) -> bool:
        """End this attempt; with ``unless_ended``, return False if it ended already (else ClaimLost)."""
        type_id, task_id = self._check_claim(claim)
        try:
            # held first: a task held in scheduled/ or running/ is in no terminal directory, so this attempt
            # cannot have ended it (only when it is not held is a terminal directory worth looking at)
            path, _ = self._claim_path(claim)
        except ClaimLost:
            if self._own_terminal(claim) is not None:
                if unless_ended:
                    return False
                raise ClaimLost(f"task {claim} already ended; a second terminal state is refused") from None
            raise
        _check_lease(claim)  # just before the terminal record, which a stale path may still let through
        self._append(path, state, message, claim)
        ended = self._dirs[DIR_OF[state]]
        dest = f"{ended}/{claim.key}"
        if not fsio.move(path, dest, proof="dst"):  # publish the end: fails if a reaper fenced the claim first
            # a reaper that saw our terminal entry completes the move for us
            if self._own_terminal(claim) is None:
                raise ClaimLost(
                    f"task {claim} was taken from server {claim.server!r}; its result is discarded"
                ) from None
        self._held.pop((claim.server, claim.key, claim.attempt), None)
        if self.durable:  # a finished task must not come back as running after a power loss
            fsio.fsync_dir(ended)
        self._emit(state.name.lower(), type_id=type_id, task_id=task_id, key=claim.key, message=message)
        return True

    def retry_later(self, claim: Claim, reason: str, delay: float | None = None) -> State:
        """After a failed attempt: try again after a backoff, or FAILED once the type's retries are used up.

        :param delay: seconds to wait (a handler's ``Retry(delay=...)``);
            default: the type's exponential backoff with jitter.
        :raises ClaimLost:
        """
        _check_lease(claim)
        ttype = self.get_type(claim.type_id)
        path, _ = self._claim_path(claim)
        done = _last(self._journal(path, settle=True), "retry")
        if done >= ttype.retries:
            note = f"retries used up ({done} of {ttype.retries})" if ttype.retries else "the type allows no retries"
            self._end(claim, State.FAILED, f"{reason}\n({note})")
            return State.FAILED
        n = done + 1
        if delay is None:
            delay = ttype.retry_delay(n)
        elif delay < 0:
            raise ValueError(f"a retry delay must not be negative, not {delay}")
        due = self.clock() + delay
        when = datetime.fromtimestamp(due, timezone.utc).isoformat(timespec="seconds")
        note = f"retry {n} of {ttype.retries} in {delay:.1f} s (at {when}): {reason}"
        self._append(path, State.ENQUEUED, note, claim, retry=n)
        self._held.pop((claim.server, claim.key, claim.attempt), None)  # given up, whatever the move says
        dest = self.path / "delayed" / f"{int(due * 1e9):016x}~{claim.key}"
        if not fsio.move(path, dest, proof="dst"):  # fails if a reaper fenced the claim first
            raise ClaimLost(f"task {claim} was taken from server {claim.server!r}; its retry is discarded")
        self._emit("reenqueued", type_id=claim.type_id, task_id=claim.task_id, key=claim.key, message=note)
        return State.ENQUEUED

    def cancel(self, type_id: str, task_id: str, by: str = "") -> State:
        """Cancel a task: an ENQUEUED one ends FAILED at once; a running one is asked to stop.

        Return FAILED when it ended, else its state (SCHEDULED or RUNNING):
        the consumer holding it sees the request (``cancel_requested``) and
        ends it. ``by`` says who cancelled, for the log.

        :raises ValueError: the task has already ended. :raises TaskNotFound:
        """
        who = by or "someone"
        for _ in range(10):
            path, state, _, key = self._find(type_id, task_id)
            if state.terminal:
                raise ValueError(
                    f"task {type_id!r}/{task_id!r} is already {state.name}; only ENQUEUED, SCHEDULED "
                    "and RUNNING tasks can be cancelled"
                )
            if state is State.ENQUEUED:
                grave = self.path / "tmp" / f"cancel~{secrets.token_hex(4)}~{key}"
                if not fsio.move(path, grave, proof="dst"):  # taking it fences every consumer: one winner
                    continue  # claimed meanwhile: ask its holder instead
                with contextlib.suppress(Exception):
                    slot = self._read_record(grave, key, quarantine=False).get("slot")
                    if slot is not None:
                        self._unlink_if_points(self.path / "slots" / str(slot), key)
                attempt = sum(1 for r in self._journal(grave, settle=True) if r.state is State.SCHEDULED)
                self._append(grave, State.FAILED, f"cancelled by {who}", None, attempt=attempt)
                fsio.move(grave, self.path / "failed" / key, proof="src")
                self._emit("failed", type_id=type_id, task_id=task_id, key=key, message=f"cancelled by {who}")
                return State.FAILED
            data = json.dumps({"by": who, "t": self.clock()}).encode()
            try:
                # created inside the task directory: it travels with the task and dies with it
                self._write_new(path / "cancel", data)
            except FileExistsError:
                pass  # asked already
            except (FileNotFoundError, NotADirectoryError):
                continue  # it moved on meanwhile: look again
            return state
        raise TaskNotFound(type_id, task_id, self)

    def cancel_requested(self, claim: Claim) -> str | None:
        """Who asked to cancel this held task, or None; cheap enough to poll."""
        self._check_claim(claim)
        held = self._held.get((claim.server, claim.key, claim.attempt))
        if held is not None:  # where this process last left it (another handle may have moved it: then look)
            who = self._cancel_marker(held[0])
            if who is not None or fsio.real_dir(held[0]):
                return who
        for state in _HELD:
            who = self._cancel_marker(f"{self._dirs[DIR_OF[state]]}/{claim.server}/{claim.key}")
            if who is not None:
                return who
        return None

    def _cancel_marker(self, path: fsio.PathArg) -> str | None:
        marker = f"{os.fspath(path)}/cancel"
        # the usual answer, "none", without raising ENOENT; a network mount's lookup may answer from a cache,
        # so there open() asks (close-to-open consistency), as it does where access() proved unreliable
        if self._access_works and not os.access(marker, os.F_OK, effective_ids=True, follow_symlinks=False):
            return None
        try:
            # O_NONBLOCK: a FIFO planted as the marker opens at once (the daemon's loop polls this)
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
        except OSError:  # EAGAIN: a FIFO a writer holds open; whatever a marker holds, its being there is the request
            data = b""
        finally:
            os.close(fd)
        try:
            return str(json.loads(data).get("by") or "someone")
        except (ValueError, AttributeError):
            return "someone"

    def rerun(self, type_id: str, task_id: str, message: str = "", by: str = "") -> None:
        """Put a FAILED task back in the queue, keeping its history; its restart and retry budgets start afresh.

        :raises ValueError: the task is not FAILED. :raises TaskNotFound:
        """
        path, state, _, key = self._find(type_id, task_id)
        if state is not State.FAILED:
            raise ValueError(f"task {type_id!r}/{task_id!r} is {state.name}; only FAILED tasks can be re-run")
        grave = self.path / "tmp" / f"rerun~{secrets.token_hex(4)}~{key}"
        if not fsio.move(path, grave, proof="dst"):  # one winner if two operators re-run it at once
            raise TaskNotFound(type_id, task_id, self)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grave / "cancel")
        attempt = sum(1 for r in self._journal(grave, settle=True) if r.state is State.SCHEDULED)
        note = message or f"re-run requested by {by or 'someone'}"
        self._append(grave, State.ENQUEUED, note, None, attempt=attempt, restart=0, retry=0)
        fsio.move(grave, self.path / "enqueued" / key, proof="src")  # back under its old key: it keeps its place
        self._listed = 0.0
        self._emit("reenqueued", type_id=type_id, task_id=task_id, key=key, message=note)

    # ------------------------------------------------------------------ maintenance

    def abandon(self, claim: Claim, reason: str, *, count: bool = True) -> State | None:
        """Take a held task back: re-enqueue it, or fail it when its restarts are used up.

        ``count=False`` re-enqueues without counting a restart (a clean shutdown).
        Return the state the task ends in, or None if it was no longer held.
        """
        try:
            path, _ = self._claim_path(claim)
        except ClaimLost:
            return None
        self._held.pop((claim.server, claim.key, claim.attempt), None)
        return self._reap(path, claim.key, reason, count=count)

    def give_back(self, claim: Claim, reason: str) -> State | None:
        """Hand back a task whose consumer lost track of it after a false error from the file system.

        For a consumer that got :class:`~spoolatp.errors.ClaimLost` (or an
        error) while its task may still sit in its ``running/`` or
        ``scheduled/`` directory: the task is re-enqueued without counting a
        restart, so it is never left there with no owner until its timeout.
        Only the consumer that knows no other attempt of this key runs under
        its server id may call it (a task whose journal shows a later attempt
        than the claim's is left alone). Return the state the task ends in,
        or None if the server does not hold it.
        """
        self._check_claim(claim)
        self._held.pop((claim.server, claim.key, claim.attempt), None)
        return self._give_back(claim.server, claim.key, reason, attempt=claim.attempt)

    def _give_back(self, server: str, key: str, reason: str, *, attempt: int | None = None) -> State | None:
        """Re-enqueue task ``key`` if ``server``'s directories list it, without counting a restart.

        See :meth:`give_back`. ``attempt``: leave it if its journal counts more attempts (a later claim holds it).
        """
        for tries in range(fsio.SETTLE_TRIES):
            held = False
            for state in _HELD:
                base = f"{self._dirs[DIR_OF[state]]}/{server}"
                # a readdir is answered by the server, where a lookup may be answered from a stale cache (GlusterFS)
                if not fsio.listed(base, key):
                    continue
                held = True
                path = f"{base}/{key}"
                if attempt is not None and self._attempts(path) > attempt:
                    return None  # a later claim of this server holds it: not ours to give back
                end = self._reap(path, key, reason, count=False)
                if end is not None:
                    return end
            if not held:
                return None
            time.sleep(fsio.settle_delay(tries))  # listed, yet the lookup or the rename failed: GlusterFS settling
        return None

    def reenqueue_zombies(self, message: str = "") -> list[tuple[str, str, State]]:
        """Re-enqueue (or fail, past ``maxrestart``) tasks held longer than their type's timeout."""
        now = self.clock()
        out = []
        for state in (State.SCHEDULED, State.RUNNING):
            base = self.path / DIR_OF[state]
            for server in fsio.listdir(base):
                if not fsio.real_dir(base / server):  # a link planted as a server directory is moved, never listed
                    if fsio.planted(base / server):  # GlusterFS: a failed lookup of a real one proves nothing
                        self._quarantine(base / server, "not a server directory (plain file or symlink)")
                    continue
                for key in fsio.listdir(base / server):
                    path = base / server / key
                    try:
                        type_id, task_id = parse_key(key)
                    except ValueError:  # not a task: re-enqueueing it would only fail later
                        self._quarantine(path, "name is not a task key")
                        continue
                    if not fsio.real_dir(path):  # its journal is never read through a planted link
                        # GlusterFS: the lookup of a directory another host just renamed may fail; only a
                        # file or link seen there is moved aside
                        if fsio.planted(path):
                            self._quarantine(path, "not a task directory (plain file or symlink in a state directory)")
                        continue
                    try:
                        timeout = self.get_type(type_id).timeout
                    except (ValueError, UnknownTaskType):
                        timeout = 3600.0
                    claimed = [r.time for r in self._journal(path) if r.state is State.SCHEDULED]
                    # the claim's rename stamps the directory's ctime: a task claimed again a moment ago, whose
                    # SCHEDULED record is not written yet, is not judged by its previous attempt's claim
                    since = max(claimed[-1] if claimed else 0.0, fsio.ctime(path, now))
                    if now - since <= timeout:
                        continue
                    reason = message or f"abandoned: not finished within its timeout of {timeout:g} s on {server}"
                    end = self._reap(path, key, reason, count=True)
                    if end is not None:
                        out.append((type_id, task_id, end))
        return out

    def _reap(self, path: fsio.PathArg, key: str, reason: str, *, count: bool) -> State | None:
        if not fsio.real_dir(path):
            # a file or link planted in a state directory: aside, never followed (not a real directory whose
            # lookup failed falsely, as GlusterFS's may just after a rename)
            if fsio.planted(path):
                self._quarantine(path, "not a task directory (plain file or symlink in a state directory)")
            return None
        grave = self.path / "tmp" / f"reap~{secrets.token_hex(4)}~{key}"
        if not fsio.move(path, grave, proof="dst"):  # fence: from now on the old holder's writes fail with ENOENT
            return None
        try:
            return self._settle(grave, key, reason, count=count)
        except CorruptTaskFile:  # its journal cannot be appended to (a FIFO): quarantined
            return None
        except ClaimLost:  # format 2: its task file cannot be written just now (a network mount): sweep_tmp finishes it
            log.warning(
                "task %s set aside in %s: its record could not be written; the sweep of tmp/ finishes it", key, grave
            )
            return None

    def _settle(self, grave: Path, key: str, reason: str, *, count: bool) -> State:
        """Decide where a fenced task goes and move it there."""
        journal = self._journal(grave, settle=True)  # counts restarts and attempts
        type_id, task_id = parse_key(key)
        attempt = sum(1 for r in journal if r.state is State.SCHEDULED)
        last = [r for r in journal if r.state is not None]
        if last and last[-1].state.terminal and last[-1].attempt == attempt:  # type: ignore[union-attr]
            end = last[-1].state
            assert end is not None
            fsio.move(grave, self.path / DIR_OF[end] / key, proof="src")  # its holder ended it, died before moving it
            return end
        try:
            maxrestart = self.get_type(type_id).maxrestart
        except UnknownTaskType:
            maxrestart = 0
        restarts = _last(journal, "restart")
        if count and restarts >= maxrestart:
            message = f"{reason}; restart limit of {maxrestart} used up, giving up"
            self._append(grave, State.FAILED, message, None, attempt=attempt)
            fsio.move(grave, self.path / "failed" / key, proof="src")
            self._emit("failed", type_id=type_id, task_id=task_id, key=key, message=message)
            return State.FAILED
        restart = restarts + 1 if count else restarts
        note = f"{reason}; re-enqueued (restart {restart} of {maxrestart})" if count else f"{reason}; re-enqueued"
        self._append(grave, State.ENQUEUED, note, None, attempt=attempt, restart=restart)
        fsio.move(grave, self.path / "enqueued" / key, proof="src")  # back under its old key: it keeps its place
        self._candidates.clear()  # ... which the cached listing of the queue does not show
        self._emit("reenqueued", type_id=type_id, task_id=task_id, key=key, message=note)
        return State.ENQUEUED

    def recover(self, server: str, reason: str = "", *, count: bool = True) -> list[tuple[str, str, State]]:
        """Take back every task held by ``server`` (a daemon restarting with the same id).

        ``count=False`` re-enqueues without counting a restart (a daemon giving back its own tasks as it stops).
        """
        validate_id(server, "server id")
        out = []
        for state in (State.SCHEDULED, State.RUNNING):
            base = self.path / DIR_OF[state] / server
            if not fsio.real_dir(base):  # absent, or a link planted in its place: nothing of this server's
                continue
            for key in fsio.listdir(base):
                try:
                    parse_key(key)
                except ValueError:  # not a task: re-enqueueing it would only fail later
                    self._quarantine(base / key, "name is not a task key")
                    continue
                end = self._reap(base / key, key, reason or f"abandoned by an earlier run of {server}", count=count)
                if end is not None:
                    out.append((*parse_key(key), end))
        return out

    def delete_retired(self) -> list[tuple[str, str]]:
        """Delete FINISHED and FAILED tasks older than their type's ``timeret`` (> 0)."""
        return self.retire()[0]

    def retire(self, keeps: dict[str, float] | None = None) -> tuple[list[tuple[str, str]], float]:
        """:meth:`delete_retired`, and when (spool clock) the next of the tasks it left becomes due.

        ``keeps``: ``timeret`` by type, for the types whose tasks retire (> 0); read per task when not
        given. The time is ``inf`` when nothing it saw will ever retire, and now for a task whose end
        could not be read (it is looked at again next time). The tasks it lists are every ended task, so
        the caller decides how often that is worth it (see ``Daemon._delete_retired``).
        """
        now = self.clock()
        out = []
        next_due = math.inf
        for state in (State.FINISHED, State.FAILED):
            base = self.path / DIR_OF[state]
            for key in fsio.listdir(base):
                try:
                    type_id, task_id = parse_key(key)
                    keep = self.get_type(type_id).timeret if keeps is None else keeps.get(type_id, -1.0)
                except (ValueError, UnknownTaskType):
                    continue
                if keep <= 0:
                    continue
                if not fsio.real_dir(base / key):
                    if fsio.planted(base / key):  # GlusterFS: a failed lookup of a real one proves nothing
                        reason = "not a task directory (plain file or symlink in a state directory)"
                        self._quarantine(base / key, reason)
                    continue
                ended = fsio.mtime(base / key / self.journal_file, None)  # its last journal line
                if ended is None:
                    next_due = now
                    continue
                if now - ended <= keep:
                    next_due = min(next_due, ended + keep)
                    continue
                grave = self.path / "tmp" / f"del~{secrets.token_hex(4)}~{key}"
                if not fsio.move(base / key, grave, proof="dst"):  # one winner when several sweepers retire at once
                    continue
                self._bury(grave, key)
                out.append((type_id, task_id))
                self._emit("retired", type_id=type_id, task_id=task_id, key=key)
        return out, next_due

    def sweep_tmp(self, grace: float = TMP_GRACE) -> list[str]:
        """Finish or undo what crashed processes left in ``tmp/`` more than ``grace`` seconds ago."""
        now = self.clock()  # tmp/ mtimes are stamped by the file server's clock
        done = []
        for entry in fsio.listdir(self.path / "tmp"):
            path = self.path / "tmp" / entry
            if entry.startswith("clock~") and now - fsio.mtime(path, now) < 60:
                continue  # another process is reading the clock right now
            # ctime too: a rename into tmp/ updates the ctime of what it moves, never its mtime
            age = now - max(fsio.mtime(path, now), fsio.ctime(path, now))
            if age < grace:
                continue
            kind, _, rest = entry.partition("~")
            key = rest.partition("~")[2]
            try:
                if kind in ("reap", "cancel", "rerun") and fsio.real_dir(path):
                    try:
                        self._settle(path, key, "recovered after a crash during re-enqueue", count=False)
                    except CorruptTaskFile:  # its journal file is a FIFO: quarantined
                        pass
                    except ClaimLost:  # no task file to record it in (format 2), minutes after it was set aside
                        names = fsio.names_or_none(path)
                        if names is None or "task" in names:
                            continue  # a mount that cannot say yet: the next sweep tries again
                        self._quarantine(path, "task directory without a task file", key)
                elif kind in ("del", "enq") and key:
                    self._bury(path, key)
                else:
                    fsio.remove(path)
            except (OSError, ValueError, CorruptTaskFile) as exc:
                log.warning("could not clean %s: %s", path, exc)
                continue
            done.append(entry)
        # slots whose task left the queue without releasing them (a consumer crashed)
        for n in fsio.listdir(self.path / "slots"):
            holder = self._readlink(self.path / "slots" / n)
            slot_age = now - fsio.mtime(self.path / "slots" / n, now, follow=False)
            if holder and slot_age > grace and not (_is_key(holder) and (self.path / "enqueued" / holder).exists()):
                self._unlink_if_points(self.path / "slots" / n, holder)
        return done

    # ------------------------------------------------------------------ files inside a task

    def _read_record(
        self,
        path: fsio.PathArg,
        key: str,
        *,
        quarantine: bool = True,
        is_dir: bool = False,
        remember: bool = False,
        read: list[bytes] | None = None,
        fd: int | None = None,
    ) -> dict[str, Any]:
        """The enqueue record of task directory ``path``; unpickled only after its checksum or signature matched.

        ``is_dir``: the caller has just lstat-ed ``path`` and found a directory (not a link): not checked again.
        ``remember``: keep the bytes and the record for the next call (claim() for start()), which returns the
        same record, unchecked, if it reads the same bytes for the same key; any other call forgets them.
        ``read``: the bytes of the task file are appended to it once read (format 2: the journal follows
        the record), whether the record is then valid or not. ``fd``: the task file, opened by the caller
        (at offset 0, ``O_NONBLOCK``), read instead of opening it.

        :raises CorruptTaskFile: (the task is quarantined unless ``quarantine`` is False)
        :raises SigningKeyError: raised before anything is read, and quarantines nothing.
        :raises FileNotFoundError: the task moved on meanwhile.
        """
        signer = self._signing_key()  # a process without the right key must never take good tasks for forged ones
        file = f"{os.fspath(path)}/task"
        try:
            if not is_dir and not stat.S_ISDIR(os.lstat(path).st_mode):
                raise CorruptTaskFile(path, "not a task directory (plain file or symlink in a state directory)")
            data = fsio.read_settled(file, local=self._local) if fd is None else fsio.read_open(fd, file, local=True)
            if read is not None:
                read.append(data)
            if not data and (odd := fsio.not_regular(file)):  # a FIFO planted there reads as b"" (fsio.read_file)
                raise CorruptTaskFile(file, f"task is {odd}, not a regular file (planted?)")
            # format 2: the journal lines that follow are not the record's; cut in format 1 too, where nothing
            # follows, but a task an interrupted `spoolatp upgrade` converted must not look truncated
            with contextlib.suppress(ValueError):  # unseal says what is wrong with the header
                data = data[: journal_offset(data)]
            memo, self._memo = self._memo, None
            if memo is not None and memo[0] == key and memo[1] == data:
                return memo[2]  # these very bytes passed the checks below, in this process, a moment ago
            payload, _ = unseal(TASK_MAGIC, data, file, key=signer, bind=key)
            record = pickle.loads(payload)  # only after the checksum (or the signature) matched
            if not isinstance(record, dict) or not _RECORD_KEYS <= record.keys():
                raise CorruptTaskFile(file, "record lacks type, id, input or enqueued")
            if make_key(record["type"], record["id"], int(key[1:17], 16), key_priority(key)) != key:
                raise CorruptTaskFile(file, "record does not belong to its directory name")
            if remember:
                self._memo = (key, data, record)
            return record
        except (CorruptTaskFile, OSError, pickle.UnpicklingError, ValueError, EOFError) as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.exists(path):
                raise  # the task moved on
            if isinstance(exc, OSError) and exc.errno == errno.ESTALE:
                raise  # a network file system that has not settled yet: no reason to quarantine a task
            names = fsio.names_or_none(path) if isinstance(exc, FileNotFoundError) and not self._local else []
            if names is None or (names and "task" in names):
                # a lookup's false ENOENT outlasted read_settled's retries (GlusterFS) while a readdir, which the
                # server answers, lists the file, or cannot list the directory (ESTALE, seen in the rig just
                # after the rename that brought it here): the task is taken to be whole, and its claimer gives
                # it back (the message goes into the journal with it), unless the mount said so too often to be
                # passing. Format 2 cannot record that without the task file: the give-back then waits in tmp/
                # for the sweep there, which finishes it once the file can be read. A listing without the
                # file is the truth: the task is damaged, and set aside below
                seen = self._journal_data(os.fspath(path)).count(FALSE_MISSING.encode())
                if seen < FALSE_MISSING_LIMIT:
                    raise FileNotFoundError(errno.ENOENT, FALSE_MISSING, file) from None
                exc = CorruptTaskFile(file, f"{FALSE_MISSING}, {seen + 1} times: the mount may be failing")
            if isinstance(exc, BlockingIOError) and (odd := fsio.not_regular(file)):  # a FIFO with a writer (or us)
                exc = CorruptTaskFile(file, f"task is {odd}, not a regular file (planted?)")
            err = exc if isinstance(exc, CorruptTaskFile) else CorruptTaskFile(file, str(exc))
            if quarantine:
                self._quarantine(path, err.reason)
            raise err from None

    def _quarantine(self, path: fsio.PathArg, reason: str, key: str | None = None) -> None:
        """Move ``path`` aside with ``reason``; ``key``: the task's, when ``path`` is not named by it (tmp/)."""
        path = Path(path)
        key = key or path.name
        name = f"{key[:200]}~{secrets.token_hex(4)}"
        dest = self.path / "quarantine" / name
        if not fsio.move(path, dest, proof="dst"):  # aside in one step; a symlink is moved, never followed
            return
        self._write_new(self.path / "quarantine" / f"{name}.reason", f"{path}: {reason}\n".encode())
        log.error("quarantined %s: %s", path, reason)
        with contextlib.suppress(ValueError):  # a task that is gone must not keep its (type, id) taken
            self._release_id(key, files_to=self.path / "quarantine" / f"{name}.files")

    def _append(
        self,
        path: fsio.PathArg,
        state: State | None,
        message: str,
        claim: Claim | None,
        *,
        attempt: int | None = None,
        progress: float | None = None,
        restart: int | None = None,
        retry: int | None = None,
        then: tuple[State, str] | None = None,
        fd: int | None = None,
    ) -> None:
        """Append one record to the journal of the task directory ``path``; ``then``: a second (state, message)
        record of the same claim in the same write (claim_and_start); ``fd``: the journal file, opened by the
        caller ``O_APPEND`` (and left open), written instead of opening it."""
        now = self.clock()
        code = int(state) if state else None
        # _records_with relies on this form: compact separators, members t, s, m first
        if (
            claim is not None
            and retry is None
            and progress is None
            and restart is None
            and type(message) is str
            and type(claim.server) is str
            and type(claim.attempt) is int
            and math.isfinite(now)
        ):
            # a holder's state change or note, the common line: what _JOURNAL_LINE.encode gives for it
            # (float and int repr, JSON strings), written out, at a fraction of the cost
            srv = _json_string(claim.server)
            lines = _holder_line(now, code, message, srv, claim.attempt)
            if then is not None and type(then[1]) is str:
                lines += _holder_line(now, int(then[0]), then[1], srv, claim.attempt)
                then = None
            line = lines.encode()
        else:
            entry: dict[str, Any] = {"t": now, "s": code, "m": message}
            if retry is not None:
                entry["retry"] = retry
            if claim is not None:
                entry["srv"], entry["att"] = claim.server, claim.attempt
            elif attempt is not None:
                entry["att"] = attempt
            if progress is not None:
                entry["p"] = progress
            if restart is not None:
                entry["restart"] = restart
            line = _JOURNAL_LINE.encode(entry).encode() + b"\n"
        if then is not None:  # not written out above
            entry = {"t": now, "s": int(then[0]), "m": then[1]}
            if claim is not None:
                entry["srv"], entry["att"] = claim.server, claim.attempt
            line += _JOURNAL_LINE.encode(entry).encode() + b"\n"
        name = self.journal_file
        owned = fd is None
        if fd is None:
            fd = self._open_journal(path, name, claim)
        else:
            # the caller opened it before reading the record: a reaper or a delete that renamed the task
            # directory away since must fence this write as a fresh open by path would (ENOENT)
            try:
                os.lstat(f"{os.fspath(path)}/{name}")
            except FileNotFoundError:
                raise ClaimLost(f"task {claim or _name(path)} was taken away; this change is discarded") from None
        try:
            written = os.write(fd, line)
            if written < len(line):  # the file system filled up within the line
                with contextlib.suppress(OSError):
                    # cut the torn line off, or the next entry would be glued to it (and skipped with it)
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if claim is not None and self._held:
                self._track(claim, path, written)
            if self.durable:
                os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:  # a full FIFO, which someone holds open for reading: a file never says so
                raise self._unwritable(path, name, claim) from None
            fsio.reraise(exc, f"cannot record a change of task {_name(path)} in the spool at {self}")
        finally:
            if owned:
                os.close(fd)

    def _open_journal(self, path: fsio.PathArg, name: str, claim: Claim | None) -> int:
        """Open the journal file ``name`` of task directory ``path`` to append to it.

        :raises ClaimLost: the directory is gone (a reaper moved it).
        """
        # format 2 appends to the task file, written whole before the task was published: never created here
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT if name == "journal" else 0)
        for attempt in itertools.count():  # fsio.settling bounds it; it may say "again" on its last try
            try:
                # O_APPEND through the task directory's current path: ENOENT once a reaper moved it; the
                # directory is opened O_NOFOLLOW, so a link in its place is never written through
                return fsio.open_in(path, name, flags)
            except NotADirectoryError:
                raise ClaimLost(f"task {claim or _name(path)} was taken away; this change is discarded") from None
            except OSError as exc:
                if fsio.settling(exc, path, attempt):  # GlusterFS, just after a rename
                    continue
                if exc.errno in (errno.ENOENT, errno.ESTALE):
                    raise ClaimLost(f"task {claim or _name(path)} was taken away; this change is discarded") from None
                if exc.errno == errno.ENXIO:  # O_NONBLOCK (fsio.open_in): a FIFO with no reader, or a device
                    raise self._unwritable(path, name, claim) from None
                fsio.reraise(exc, f"cannot record a change of task {_name(path)} in the spool at {self}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _unwritable(self, path: fsio.PathArg, name: str, claim: Claim | None) -> CorruptTaskFile:
        """Quarantine task directory ``path``, whose journal file ``name`` is no file to append to; the error to raise.

        Only a FIFO (or a device) planted in its place can be (ENXIO: no reader; EAGAIN: full): nothing could
        record the task's changes, and what is read from it later is empty or the planter's. ``claim``: its
        holder's; None for a task fenced in tmp/ (``<kind>~<token>~<KEY>``).
        """
        file = f"{os.fspath(path)}/{name}"
        err = CorruptTaskFile(
            file, f"{name} is {fsio.not_regular(file) or 'a special file'}, not a regular file (planted?)"
        )
        self._quarantine(path, err.reason, claim.key if claim is not None else _name(path).split("~", 2)[-1])
        return err

    def _hold(self, claim: Claim, path: str, state: State, size: int) -> None:
        """Remember a claim this process holds, at ``path`` with a journal of ``size`` bytes (see _claim_path)."""
        if not self._local:
            return
        if len(self._held) >= 4096:  # a bound: claims given up without an end are forgotten here, not freed
            self._held.clear()
        self._held[(claim.server, claim.key, claim.attempt)] = (path, state, size)

    def _track(self, claim: Claim, path: fsio.PathArg, written: int) -> None:
        """After this claim appended ``written`` bytes to the journal at ``path``: the size it expects there.

        Not asked of the file: if someone else's line came before ours, the journal is longer than the
        size expected, and the next :meth:`_claim_path` goes the slow way (a journal only grows).
        """
        k = (claim.server, claim.key, claim.attempt)
        held = self._held.get(k)
        if held is None:
            return
        if held[0] == os.fspath(path):
            self._held[k] = (held[0], held[1], held[2] + written)
        else:  # another directory: check the slow way next time
            self._held.pop(k, None)

    def _journal(self, path: fsio.PathArg, *, settle: bool = False, strict: bool = False) -> list[LogRecord]:
        """The journal of task directory ``path``; [] if it has none.

        ``settle`` and ``strict`` as for :meth:`_journal_data`; an unreadable
        journal is a record saying so, or with ``strict`` the OSError.
        """
        try:
            data = self._read_journal(os.fspath(path), settle=settle, strict=strict)
        except OSError as exc:
            if strict:
                raise
            return [LogRecord(time.time(), None, f"journal unreadable: {exc}")]
        return _parse_journal(data)

    def _journal_data(self, path: str, *, settle: bool = False, strict: bool = False) -> bytes:
        """The raw journal of task directory ``path``; empty if there is none or (without ``strict``) it cannot be read.

        (:meth:`_journal` would give no record with a state either way.)
        With ``settle`` (callers that count attempts), a journal that is there
        but not visible yet (a network file system just after a rename) is
        read again while its directory is there, as :func:`fsio.read_settled`
        does (about 2 s at most). With ``settle`` or ``strict``, "no journal"
        is believed only when a listing of the task directory says so (or the
        directory is gone); ``strict`` raises the OSError of a journal that
        stays unreadable.
        """
        try:
            return self._read_journal(path, settle=settle, strict=strict)
        except OSError:
            if strict:
                raise
            return b""

    def _read_journal(self, path: str, *, settle: bool, strict: bool) -> bytes:
        """The raw journal of task directory ``path``, b"" if it has none; :raises OSError: it cannot be read."""
        name = self.journal_file
        for attempt in itertools.count():  # fsio.settling bounds it; it may say "again" on its last try
            try:
                # a FIFO planted there reads as empty (fsio.read_file), as a task file whose header does not parse:
                # no journal to show; whoever next reads the record or appends quarantines the task
                if name == "journal":
                    return fsio.read_file(f"{path}/journal", local=self._local)
                return fsio.read_file(f"{path}/task", local=self._local, skip=_journal_start)
            except NotADirectoryError:
                return b""
            except OSError as exc:
                if exc.errno == errno.ENOENT and self._local:
                    return b""  # a local file system's lookup is the truth: none yet, or the directory moved on
                if exc.errno == errno.ENOENT and (settle or strict):
                    # GlusterFS may answer a lookup of a file a rename just brought here with ENOENT; the
                    # readdir of its directory is answered by the server
                    names = fsio.names_or_none(path)
                    if names is not None and name not in names:
                        return b""  # none yet: a task never claimed (format 1), or a damaged one
                if settle and fsio.settling(exc, path, attempt):  # GlusterFS: not visible yet, or a stale handle
                    continue
                if exc.errno == errno.ENOENT and (not (settle or strict) or not os.path.lexists(path)):
                    return b""  # none, or the directory moved on
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempts(self, path: str, *, settle: bool = False, strict: bool = False) -> int:
        """How often the task in directory ``path`` was claimed: its SCHEDULED records (see :meth:`_journal_data`)."""
        return _count_state(self._journal_data(path, settle=settle, strict=strict), State.SCHEDULED)

    def _emit(self, name: str, **info: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, info)
        except Exception:
            log.exception("event observer failed on %s %s", name, info)


# --------------------------------------------------------------------------- helpers


def _access_finds(path: str) -> bool:
    """Whether ``access()`` (effective ids, not following a link) finds ``path``, which exists."""
    try:
        return os.access(path, os.F_OK, effective_ids=True, follow_symlinks=False)
    except (OSError, NotImplementedError):  # the platform cannot combine the two
        return False


def _host_time() -> float:
    """This host's clock; ``SPOOLATP_CLOCK_OFFSET`` (seconds) skews it, for tests of skew."""
    return time.time() + _CLOCK_OFFSET


_CLOCK_OFFSET = float(os.environ.get("SPOOLATP_CLOCK_OFFSET") or 0.0)


#: the longest delay a task may have, seconds (100 years)
MAX_DELAY = 100 * 365.25 * 86400


def _due(not_before: datetime | float | None, now: float) -> float | None:
    """When a task may start (spool clock), from ``not_before``; None for at once."""
    if not_before is None:
        return None
    if isinstance(not_before, datetime):
        # a wall-clock time means the same instant on every host: shift it onto the spool's clock
        due = not_before.timestamp() - _host_time() + now
        if due - now > MAX_DELAY:
            raise ValueError(f"not_before {not_before.isoformat()} is more than 100 years away")
        return due if due > now else None
    if isinstance(not_before, bool) or not isinstance(not_before, (int, float)) or not math.isfinite(not_before):
        raise ValueError(f"not_before must be a datetime or a number of seconds, not {not_before!r}")
    if not_before < 0:
        raise ValueError(f"not_before must not be negative ({not_before} s); give a delay from now in seconds")
    if not_before > MAX_DELAY:  # due names hold 16 hex digits of nanoseconds: they end in 2554
        raise ValueError(f"not_before is {not_before:g} s away; the limit is 100 years")
    return now + not_before if not_before > 0 else None


def _journal_start(head: bytes) -> int:
    """Where a format-2 task file's journal starts, from its first bytes; a header that does not parse: at the end
    (the task has no journal to show, and its claim quarantines it)."""
    try:
        return journal_offset(head)
    except ValueError:
        return 1 << 62


def _last(journal: list[LogRecord], field: str) -> int:
    """The latest value of a counter (``restart``, ``retry``) in a journal; a re-run sets them to 0."""
    for rec in reversed(journal):
        value = getattr(rec, field)
        if value is not None:
            return int(value)
    return 0


def _is_key(text: str) -> bool:
    try:
        parse_key(text)
    except ValueError:
        return False
    return True


#: what every task record holds
_RECORD_KEYS = frozenset(("type", "id", "input", "enqueued"))

#: where a claim's task may be held, in the order _claim_path looks
_HELD = (State.RUNNING, State.SCHEDULED)
_HELD_SCHEDULED_FIRST = (State.SCHEDULED, State.RUNNING)

#: how Spool._append writes a journal line (one encoder: json.dumps with options builds one per call)
_JOURNAL_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: a str as _JOURNAL_LINE writes it (ensure_ascii=False)
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _holder_line(now: float, code: int | None, message: str, srv: str, attempt: int) -> str:
    """A holder's journal line as _JOURNAL_LINE would encode it (``srv`` already a JSON string), written out."""
    field = "null" if code is None else code
    return f'{{"t":{now!r},"s":{field},"m":{_json_string(message)},"srv":{srv},"att":{attempt}}}\n'


#: the bytes a journal line holds if its state is S (see _records_with)
_STATE_FIELD = {state: b'"s":%d' % state for state in State}
_TERMINAL_FIELDS = tuple(field for state, field in _STATE_FIELD.items() if state.terminal)


def _name(path: fsio.PathArg) -> str:
    return os.path.basename(path)


def _parse_line(raw: bytes) -> LogRecord | None:
    """One journal line as a record; None for a torn or foreign line, which is skipped, never trusted."""
    try:
        e = json.loads(raw)
        return LogRecord(
            float(e["t"]),
            State(e["s"]) if e.get("s") is not None else None,
            str(e.get("m", "")),
            e.get("srv"),
            e.get("att"),
            float(e["p"]) if e.get("p") is not None else None,
            e.get("restart"),
            e.get("retry"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _parse_journal(data: bytes) -> list[LogRecord]:
    return [r for r in map(_parse_line, data.splitlines()) if r is not None]


def _records_with(data: bytes, field: bytes) -> list[LogRecord]:
    """The records on the lines of a raw journal that hold ``field``; no other line is parsed.

    Every journal line is written by Spool._append with separators (",", ":"), so a record of state S
    holds the bytes "s":S -- which can occur nowhere else: inside a JSON string a quote is always
    escaped, so "s": is always the member s itself. Each line found is parsed as :func:`_parse_journal`
    parses it, so a torn, glued or damaged line is skipped here too: the result is that of a full parse
    (only a line written by something else, with a space after "s", would be missed).
    """
    out = []
    at = data.find(field)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        if end < 0:
            end = len(data)
        for raw in data[start:end].splitlines():  # as _parse_journal splits, should a line hold a \r
            rec = _parse_line(raw)
            if rec is not None:
                out.append(rec)
        at = data.find(field, end)
    return out


def _count_state(data: bytes, state: State) -> int:
    """The number of records of ``state`` in a raw journal: the attempt number, for SCHEDULED."""
    return sum(1 for r in _records_with(data, _STATE_FIELD[state]) if r.state is state)


def _last_end(data: bytes) -> LogRecord | None:
    """The last record of a raw journal that ended its task (FINISHED or FAILED), if any.

    Only lines holding a terminal state are parsed, from the end (see :func:`_records_with`).
    """
    end = len(data)
    while True:
        at = max(data.rfind(field, 0, end) for field in _TERMINAL_FIELDS)
        if at < 0:
            return None
        start = data.rfind(b"\n", 0, at) + 1
        stop = data.find(b"\n", at)
        for raw in reversed(data[start : len(data) if stop < 0 else stop].splitlines()):
            rec = _parse_line(raw)
            if rec is not None and rec.state is not None and rec.state.terminal:
                return rec
        end = start  # a torn or damaged line: look further back
