"""The on-disk format: states, identifiers, task keys, records and sealed files.

Everything here is pure: names and bytes in, names and bytes out. The layout of
the spool directory, and every rename between its parts, is in :mod:`spoolatp.spool`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from spoolatp import fsio
from spoolatp.errors import CorruptTaskFile, SigningKeyError

FORMAT = 1
#: the layout of a spool, in its spool.json: 1, each task directory has a ``journal`` file; 2, the journal
#: lines follow the sealed record in the ``task`` file (one file created per task, not two)
SPOOL_FORMAT = 2
#: the format of task and response files in a signed spool (HMAC in place of the checksum)
SIGNED_FORMAT = 2
TASK_MAGIC = b"SPOOLATP-TASK"
RESPONSE_MAGIC = b"SPOOLATP-RESPONSE"
MAX_TYPE_BYTES = 64
MAX_ID_BYTES = 150
#: the environment variable naming this process's key file
KEY_ENV = "SPOOLATP_KEY_FILE"


class State(enum.IntEnum):
    """Task states with EOxServer's codes."""

    ENQUEUED = 1
    SCHEDULED = 2
    RUNNING = 3
    FINISHED = 5
    FAILED = 6

    @property
    def terminal(self) -> bool:
        return self in (State.FINISHED, State.FAILED)

    @classmethod
    def parse(cls, value: str | int | State) -> State:
        """Turn a name (``"ACCEPTED"`` is an alias of ENQUEUED) or a code into a state."""
        if isinstance(value, State):
            return value
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise ValueError(f"no task state has code {value}; codes are 1, 2, 3, 5, 6") from None
        name = str(value).strip().upper()
        if name == "ACCEPTED":
            return cls.ENQUEUED
        try:
            return cls[name]
        except KeyError:
            names = ", ".join(s.name for s in cls)
            raise ValueError(f"unknown task state {value!r}; use one of {names}") from None

    def pair(self) -> tuple[int, str]:
        return (int(self), self.name)


# --------------------------------------------------------------------------- identifiers


def validate_id(value: object, what: str = "identifier") -> str:
    """Check a type or task identifier; raise ``ValueError`` naming the culprit.

    :raises ValueError: empty, not a string, too long, or containing ``/``,
        ``\\``, NUL, control characters or ``..``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__} ({value!r})")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if value == ".":
        raise ValueError(f"{what} '.' names the current directory; use another {what}")
    for bad in ("/", "\\", "\x00", ".."):
        if bad in value:
            raise ValueError(f"{what} {value!r} contains {bad!r}, which could escape the spool; use another {what}")
    if not value.isprintable():
        raise ValueError(f"{what} {value!r} contains control characters; use printable characters only")
    if value.strip() != value:
        raise ValueError(f"{what} {value!r} starts or ends with white space; strip it")
    limit = MAX_TYPE_BYTES if what == "task type" else MAX_ID_BYTES
    if len(encode_name(value).encode()) > limit:
        raise ValueError(f"{what} {value[:40]!r}... is too long ({len(value)} characters); the limit is {limit} bytes")
    return value


def encode_name(value: str) -> str:
    out = value.replace("%", "%25").replace("~", "%7E")
    return "%2E" + out[1:] if out.startswith(".") else out


def decode_name(value: str) -> str:
    return value.replace("%7E", "~").replace("%2E", ".").replace("%25", "%")


DEFAULT_PRIORITY = 5


def validate_priority(value: object) -> int:
    """:raises ValueError: not a whole number from 0 (least urgent) to 9 (most urgent)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ValueError(f"priority must be a whole number from 0 (least urgent) to 9 (most urgent), not {value!r}")
    return value


def make_key(type_id: str, task_id: str, stamp: int, priority: int = DEFAULT_PRIORITY) -> str:
    return f"{9 - priority}{stamp:016x}~{encode_name(type_id)}~{encode_name(task_id)}"


def key_time(key: str) -> float:
    """The enqueue time (spool clock, seconds) a key carries."""
    return int(key[1:17], 16) / 1e9


def key_priority(key: str) -> int:
    return 9 - int(key[0])


_KEY_HEAD = re.compile(r"[0-9][0-9a-f]{16}")


def parse_key(key: str) -> tuple[str, str]:
    """Return ``(type_id, task_id)`` of a key; ``ValueError`` if it is not one.

    A string that passes is one safe path component (no ``/``, NUL, ``..``).
    """
    parts = key.split("~")
    if len(parts) != 3 or not _KEY_HEAD.fullmatch(parts[0]) or not all(parts):
        raise ValueError(f"{key[:200]!r} is not a task key")
    # a name planted by hand may decode to an identifier no enqueue accepts
    return validate_id(decode_name(parts[1]), "task type"), validate_id(decode_name(parts[2]), "task id")


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class TaskType:
    """A registered task type."""

    name: str
    handler: str
    timeout: float = 3600.0
    timeret: float = -1.0
    maxrestart: int = 2
    #: free-form settings for the handler (JSON), fixed at registration, e.g. a command line
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: priority of its tasks unless the enqueue says otherwise (0..9, higher first)
    priority: int = DEFAULT_PRIORITY
    #: how often a task whose handler failed (raised) is tried again
    retries: int = 0
    #: seconds before the first retry; doubled for each further one, with jitter
    backoff: float = 1.0
    #: longest wait before a retry, seconds
    backoff_max: float = 300.0

    def retry_delay(self, n: int) -> float:
        """Seconds before retry ``n`` (1, 2, ...): exponential, capped, with equal jitter."""
        full = float(min(self.backoff_max, self.backoff * 2 ** (n - 1)))
        return full / 2 + random.uniform(0, full / 2)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LogRecord:
    """One entry of a task's history."""

    time: float
    state: State | None
    message: str
    server: str | None = None
    attempt: int | None = None
    progress: float | None = None
    restart: int | None = None
    #: the failed-handler retry this entry schedules (1, 2, ...); 0 on a re-run
    retry: int | None = None

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.time, timezone.utc)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a reader can learn about a task without unpickling its input."""

    type_id: str
    task_id: str
    key: str
    state: State
    server: str | None
    attempts: int
    restarts: int
    enqueued: float
    updated: float
    progress: float | None
    progress_message: str | None
    priority: int = DEFAULT_PRIORITY
    #: when a delayed task becomes due (spool clock), None if it is not delayed
    not_before: float | None = None
    #: who asked to cancel the task while it runs, None if nobody did
    cancel_requested: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A consumer's handle on one attempt of one task (the guide's ``taskId``).

    Picklable, so a daemon can give it to a worker process.
    """

    spool: str
    server: str
    key: str
    attempt: int

    @functools.cached_property
    def _ids(self) -> tuple[str, str]:
        return parse_key(self.key)  # once per claim: it is asked for on every log line and event

    @property
    def type_id(self) -> str:
        return self._ids[0]

    @property
    def task_id(self) -> str:
        return self._ids[1]

    def __str__(self) -> str:
        return f"{self.type_id}/{self.task_id} (attempt {self.attempt} on {self.server})"


@dataclasses.dataclass(frozen=True)
class StartedTask:
    """What :meth:`Spool.start` hands a consumer: the guide's 4-tuple, named."""

    type_id: str
    task_id: str
    handler: str
    input: Any

    def __iter__(self) -> Iterator[Any]:
        return iter((self.type_id, self.task_id, self.handler, self.input))


def seal(magic: bytes, payload: bytes, meta: str = "", *, key: bytes | None = None, bind: str = "") -> bytes:
    """Prefix ``payload`` with a header line carrying format, length and checksum.

    With ``key``, the header carries an HMAC instead (format 2) that also
    covers ``meta`` and ``bind`` (the task's KEY, not written): the file then
    verifies only as this kind of file of this very task.
    """
    if key is None:
        head = b"%s %d %d %s" % (magic, FORMAT, len(payload), hashlib.sha256(payload).hexdigest().encode())
    else:
        mac = _mac(key, magic, payload, meta.encode(), bind)
        head = b"%s %d %d hmac-sha256:%s:%s" % (magic, SIGNED_FORMAT, len(payload), key_id(key).encode(), mac)
    if meta:
        head += b" " + meta.encode()
    return head + b"\n" + payload


def unseal(magic: bytes, data: bytes, path: object, *, key: bytes | None = None, bind: str = "") -> tuple[bytes, str]:
    """Check a sealed file and return ``(payload, meta)``; never unpickles anything.

    Without ``key`` the file must be format 1 with a matching checksum; with
    ``key`` it must be format 2, signed by that key for task ``bind``.

    :raises CorruptTaskFile: wrong magic, unknown format, truncated, bad
        checksum, missing or wrong signature.
    """
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise CorruptTaskFile(path, "no header line (truncated or not a spoolatp file)")
    parts = head.split(b" ", 4)
    if len(parts) < 4 or parts[0] != magic:
        raise CorruptTaskFile(path, f"header does not start with {magic.decode()!r}")
    if parts[1] not in _FORMATS:
        raise CorruptTaskFile(path, f"unknown format version {parts[1][:10]!r}")
    try:
        length = int(parts[2])
    except ValueError:
        raise CorruptTaskFile(path, "length in header is not a number") from None
    if len(payload) != length:
        raise CorruptTaskFile(path, f"truncated: header says {length} bytes, file has {len(payload)}")
    meta = parts[4] if len(parts) > 4 else b""
    if parts[1] == _FORMATS[0]:
        if key is not None:
            raise CorruptTaskFile(
                path, "not signed, but the spool requires a signature (written without the spool's key, or forged)"
            )
        if hashlib.sha256(payload).hexdigest().encode() != parts[3]:
            raise CorruptTaskFile(path, "checksum mismatch (file altered or damaged)")
    else:
        if key is None:
            raise CorruptTaskFile(path, f"signed, but this process has no key to check it (set {KEY_ENV})")
        scheme, _, rest = parts[3].partition(b":")
        signer, _, mac = rest.partition(b":")
        if scheme != b"hmac-sha256" or not mac:
            raise CorruptTaskFile(path, "signature is not of the form hmac-sha256:<key id>:<mac>")
        if signer != key_id(key).encode():
            shown = signer[:16].decode("ascii", "replace")
            raise CorruptTaskFile(path, f"signed with another key (id {shown!r}; the spool's is {key_id(key)})")
        # compared in constant time, and before anything reads the payload as more than bytes
        if not hmac.compare_digest(_mac(key, magic, payload, meta, bind), mac):
            raise CorruptTaskFile(path, "signature mismatch (forged, altered, or copied from another task)")
    return payload, meta.decode("utf-8", "replace")


_FORMATS = (b"%d" % FORMAT, b"%d" % SIGNED_FORMAT)


def journal_offset(data: bytes) -> int:
    """Where the journal lines start in a format-2 task file: after its header line and the payload it sizes.

    Nothing is checked but the header's length field (:func:`unseal` checks the rest).

    :raises ValueError: no header line, or its length is not a number.
    """
    end = data.find(b"\n")
    if end < 0:
        raise ValueError("no header line")
    parts = data[:end].split(b" ", 3)
    if len(parts) < 4:
        raise ValueError("header has fewer than four fields")
    # digits only, and no longer than any file can be: a planted length must not reach lseek as 10**25
    if not parts[2].isdigit() or len(parts[2]) > 15:
        raise ValueError(f"length {parts[2][:20]!r} in header is not a number of bytes")
    return end + 1 + int(parts[2])


def _mac(key: bytes, magic: bytes, payload: bytes, meta: bytes, bind: str) -> bytes:
    mac = hmac.new(
        key, b"%s\0%d\0%s\0%s\0" % (magic, len(payload), bind.encode("utf-8", "surrogateescape"), meta), "sha256"
    )
    mac.update(payload)
    return mac.hexdigest().encode()


def type_mac(key: bytes, name: str, data: dict[str, Any]) -> str:
    """The ``hmac`` member of a signed task type file: over its name and its other members."""
    body = json.dumps({k: v for k, v in data.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(key, b"SPOOLATP-TYPE\0%s\0%s" % (name.encode(), body.encode()), "sha256")
    return f"hmac-sha256:{key_id(key)}:{mac.hexdigest()}"


# --------------------------------------------------------------------------- keys


def key_id(key: bytes) -> str:
    """A key's public name, recorded in ``spool.json``: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


_KEYS: dict[str, bytes] = {}  # key files read by this process, by real path: each is read once


def load_key(key_file: str | os.PathLike[str], spool: str | os.PathLike[str] | None = None) -> bytes:
    """Read a spool key from ``key_file`` (once per process); trailing newlines are not part of it.

    :raises SigningKeyError: the file is missing, unreadable, not a regular
        file, accessible to others than its owner and group, shorter than 16
        bytes, or inside the spool ``spool``.
    """
    shown = os.fspath(key_file)
    real = os.path.realpath(key_file)  # a link is fine (secrets mounts use them): what counts is the file
    if spool is not None:
        root = os.path.realpath(spool)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            raise SigningKeyError(
                f"key file {shown} lies inside the spool at {spool}, where whoever can write the spool can "
                "read it; keep it outside (e.g. /etc/spoolatp/spool.key), see docs/security.md"
            )
    cached = _KEYS.get(real)
    if cached is not None:
        return cached
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO planted there cannot hang us
    except OSError as exc:
        raise SigningKeyError(f"cannot read key file {shown}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"key file {shown} is not a regular file")
        if st.st_mode & 0o007:
            raise SigningKeyError(
                f"key file {shown} is accessible to others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod o-rwx {shown}` (600, or 640 for a group of the spool's users)"
            )
        data = b""
        while len(data) <= 4096:
            chunk = os.read(fd, 4097 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    key = data.rstrip(b"\r\n")
    if len(data) > 4096 or len(key) < 16:
        raise SigningKeyError(
            f"key file {shown} holds {len(key)} bytes; a key is 16 to 4096 bytes "
            "(make one with `spoolatp init --new-key PATH`)"
        )
    _KEYS[real] = key
    return key


def new_key(key_file: str | os.PathLike[str]) -> bytes:
    """Write a new random key (32 bytes, as 64 hex digits and a newline) to ``key_file``, mode 0600.

    :raises SigningKeyError: the file exists (a key is never replaced) or cannot be written.
    """
    text = secrets.token_hex(32).encode()
    try:
        # O_EXCL: never overwrite a key some spool may still be signed with
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SigningKeyError(
            f"{os.fspath(key_file)} exists; a key file is never replaced (use it with --key-file, or pick a new path)"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot create key file {os.fspath(key_file)}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        fsio.write_all(fd, text + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return text


STATE_DIRS = ("enqueued", "delayed", "scheduled", "running", "finished", "failed")
SPOOL_DIRS = ("types", "ids", "slots", "tmp", "quarantine", "daemons", "files", *STATE_DIRS)
DIR_OF = {
    State.ENQUEUED: "enqueued",
    State.SCHEDULED: "scheduled",
    State.RUNNING: "running",
    State.FINISHED: "finished",
    State.FAILED: "failed",
}
