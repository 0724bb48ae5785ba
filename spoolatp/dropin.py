"""Drop-in producers: tasks created by putting a file into ``<spool>/drop/``.

A program that cannot or will not import spoolatp enqueues a task by writing
a file. ``ls <spool>/drop`` shows::

    <NAME>.json             a task document: {"type": T, "id": I, "input": ...}
    .<anything>             a file still being written: never read (Maildir)
    <TYPE>/                 the hot folder of task type TYPE (option hot_folder)
    <TYPE>/<FILE>           a file that becomes task TYPE/FILE, its input the
                            path the file is moved to (``Spool.files_dir``)
    rejected/<NAME>         a drop-in that could not become a task ...
    rejected/<NAME>.error   ... and one text file saying exactly why
    .ingest/                private: documents being ingested right now
    <TYPE>/.ingest/         private: hot-folder files being ingested right now

**Convention.** A producer writes under a name starting with ``.`` and then
renames the file to its final name, in the same directory: the rename makes
the whole file appear at once, so a half-written file is never read.

**Task documents** are JSON objects with the keys ``type`` (required),
``id`` (default: the file name without ``.json``), ``input`` (default
``null``), ``priority`` (0..9, default: the type's) and ``not_before``
(seconds after the document was written, or an ISO 8601 time; default: at
once); nothing else. At most :data:`MAX_DOCUMENT_BYTES` bytes and
:data:`MAX_DEPTH` levels of nested arrays and objects. JSON is parsed, never
unpickled.

A delay in seconds counts from the document's modification time (stamped by
the file server, as the spool's clock is), not from its ingest: a drop-in
that waited for an ingest, a full queue or a crashed ingester does not wait
twice, and every retry of its ingest computes the same due time.

**Ingest** (:func:`ingest`, run by the daemon on every sweep and whenever its
watcher sees a change here, and by ``spoolatp sweep``) handles one file at a
time:

1. *Claim*: rename the file into the private ``.ingest/`` directory under
   ``<STAMP>~<HOST>~<PID>~<TOKEN>~<NAME>``. Of several ingesters (daemons on
   several hosts) exactly one rename succeeds, and once claimed the file can
   be neither changed nor replaced by the producer.
2. *Enqueue* it, with a marker ``[drop-in <NAME> sha256:<HASH> ingest:<TOKEN>]``
   in the enqueue message (the first line of the task's log). A hot-folder
   file is first hard-linked into the task's files directory.
3. *Forget* it: unlink the claimed file.

A process killed between any two steps leaves the file in ``.ingest/``. The
next ingest adopts it -- at once if its claimer was a process on this host
that no longer runs, after :data:`STALE_AFTER` seconds otherwise -- by
renaming it to a new stamp with the same TOKEN, and repeats the steps.
Step 2 is idempotent: if the task already exists and its enqueue message
carries the same TOKEN, it is this very drop-in's earlier enqueue (recovered,
not enqueued again); another TOKEN means a different drop-in took that id
first (rejected as a duplicate). A hot-folder file is hard-linked, not moved,
into the task's files directory, so until step 3 it is still in ``.ingest/``
and the link is recognised as its own (same inode) on a retry. So every
drop-in becomes exactly one task -- unless its task was already run *and
deleted* before the crashed ingest was recovered, the one case in which it
is enqueued a second time.

A drop-in that fails validation goes to ``rejected/`` beside its ``.error``
file. One that meets a full queue goes back to where it was and is retried
by a later ingest (which touches nothing while the queue is full). One whose
id is held by an enqueue still in flight (or by a producer killed while
enqueuing, until a sweep of ``tmp/`` frees the id) stays claimed and is
retried after :data:`RETRY_AFTER` seconds.

Hosts that share a spool must have distinct host names: a claim is judged by
the host name and process id in its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from spoolatp import fsio
from spoolatp.errors import QueueFull, SpoolError, StorageError, TaskExists, TaskNotFound, UnknownTaskType
from spoolatp.format import State, validate_id, validate_priority
from spoolatp.spool import Spool

log = logging.getLogger(__name__)

#: largest task document accepted, in bytes (1 MiB)
MAX_DOCUMENT_BYTES = 1024 * 1024
#: deepest nesting of arrays and objects accepted in a task document
MAX_DEPTH = 32
#: longest drop-in file name accepted, in bytes (room is left for the claim prefix)
MAX_NAME_BYTES = 200
#: seconds after which a file claimed by a process that may still run is adopted
STALE_AFTER = 60.0
#: seconds before this process tries again a drop-in it had to leave claimed
RETRY_AFTER = 5.0
#: the keys a task document may have
DOCUMENT_KEYS = frozenset({"type", "id", "input", "priority", "not_before"})
#: longest delay accepted, in seconds (100 years): catches typos, and keeps a due
#: time inside the 16 hex digits of nanoseconds that name a delayed task (until 2554)
MAX_DELAY = 100 * 365 * 86400.0

REJECTED = "rejected"
INGEST = ".ingest"

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_LINK_UNSUPPORTED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EACCES}


class Rejected(Exception):
    """A drop-in cannot become a task; the message says why (it goes to the .error file)."""


class Later(Exception):
    """A drop-in cannot become a task yet; it stays claimed and is tried again later."""


@dataclasses.dataclass
class IngestReport:
    """What one :func:`ingest` pass did."""

    #: ``(type, id)`` of each task created
    enqueued: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: ``(type, id)`` of tasks an earlier, interrupted ingest had already created
    recovered: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: ``(path under drop/, reason)`` of each drop-in moved to rejected/
    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: paths under drop/ left for a later ingest (queue full, or the id still reserved)
    deferred: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.enqueued or self.recovered or self.rejected or self.deferred)

    def to_json(self) -> dict[str, Any]:
        return {
            "enqueued": [{"type": t, "id": i} for t, i in self.enqueued],
            "recovered": [{"type": t, "id": i} for t, i in self.recovered],
            "rejected": [{"file": f, "reason": r} for f, r in self.rejected],
            "deferred": list(self.deferred),
        }


@dataclasses.dataclass(frozen=True)
class _Claimed:
    """A drop-in in an ``.ingest/`` directory, claimed by this process."""

    path: Path  # where it is now
    home: Path  # the directory it was dropped into
    name: str  # its name there
    token: str  # identifies this drop-in across crashes and adoptions
    hot_type: str | None  # the hot folder's task type, None for a task document

    @property
    def shown(self) -> str:
        return f"{self.hot_type}/{self.name}" if self.hot_type is not None else self.name


# --------------------------------------------------------------------------- paths


def drop_dir(spool: Spool) -> Path:
    return spool.path / "drop"


def hot_folder(spool: Spool, type_id: str) -> Path:
    """The hot folder of a task type: ``drop/<TYPE>/``.

    :raises ValueError: the type's name cannot name a hot folder (it starts
        with ``.``, or is ``rejected``).
    """
    validate_id(type_id, "task type")
    if type_id.startswith(".") or type_id == REJECTED:
        raise ValueError(
            f"task type {type_id!r} cannot have a hot folder: drop/{type_id} would be "
            f"{'hidden' if type_id.startswith('.') else 'the rejected/ folder'}; use another type name"
        )
    return drop_dir(spool) / type_id


def prepare(spool: Spool) -> Path:
    """Create ``drop/`` and ``drop/rejected/`` and every hot folder; return ``drop/``."""
    base = drop_dir(spool)
    for path in (base, base / REJECTED, base / INGEST):
        path.mkdir(mode=0o770, exist_ok=True)
        _check_real_dir(path)
    for ttype in spool.types():
        if ttype.options.get("hot_folder"):
            with contextlib.suppress(ValueError):
                hot_folder(spool, ttype.name).mkdir(mode=0o770, exist_ok=True)
    return base


def pending(spool: Spool) -> list[str]:
    """Drop-ins waiting to be ingested (paths under drop/), including claimed ones."""
    base = drop_dir(spool)
    out = [n for n in _listdir(base) if n != REJECTED and _is_file(base / n)]
    out += [f"{INGEST}/{n}" for n in _listdir(base / INGEST, hidden=True)]
    for sub in _listdir(base):
        if sub != REJECTED and (base / sub).is_dir() and not (base / sub).is_symlink():
            out += [f"{sub}/{n}" for n in _listdir(base / sub)]
            out += [f"{sub}/{INGEST}/{n}" for n in _listdir(base / sub / INGEST, hidden=True)]
    return sorted(out)


def rejected(spool: Spool) -> list[str]:
    """Names of the rejected drop-ins (each has a ``.error`` file beside it)."""
    return sorted(n for n in _listdir(drop_dir(spool) / REJECTED) if not n.endswith(".error"))


# --------------------------------------------------------------------------- ingest


def ingest(spool: Spool, *, stale_after: float = STALE_AFTER) -> IngestReport:
    """Turn every drop-in present into a task, or reject it; return what was done.

    Safe to run in many processes on many hosts at once, and to kill at any
    moment (see the module docstring). Never raises for a bad drop-in.
    """
    report = IngestReport()
    base = prepare(spool)
    full = _queue_is_full(spool)  # then touch nothing: renames would only wake watchers for no gain
    for claimed in _adopt(spool, base / INGEST, base, None, stale_after):
        full = _process(spool, claimed, report, full)
    for name in _listdir(base):
        path = base / name
        if name == REJECTED or _is_dir(path):
            continue
        if full:
            report.deferred.append(name)
            continue
        if _too_long(name):
            _reject_long(spool, path, name, None, report)
            continue
        claimed_doc = _claim(spool, path, base / INGEST, base, name, None)
        if claimed_doc is not None:
            full = _process(spool, claimed_doc, report, full)
    for ttype in spool.types():
        try:
            folder = hot_folder(spool, ttype.name)
        except ValueError:
            continue
        if not _hot_folder_ok(spool, folder, ttype.name, report):
            continue
        for claimed in _adopt(spool, folder / INGEST, folder, ttype.name, stale_after):
            full = _process(spool, claimed, report, full)
        if not ttype.options.get("hot_folder"):
            continue
        for name in _listdir(folder):
            if full:
                report.deferred.append(f"{ttype.name}/{name}")
                continue
            if _too_long(name):
                _reject_long(spool, folder / name, name, ttype.name, report)
                continue
            (folder / INGEST).mkdir(mode=0o770, exist_ok=True)
            if not _hot_folder_ok(spool, folder, ttype.name, report):
                break
            claimed_hot = _claim(spool, folder / name, folder / INGEST, folder, name, ttype.name)
            if claimed_hot is not None:
                full = _process(spool, claimed_hot, report, full)
    for what, n in (("enqueued", report.enqueued), ("recovered", report.recovered), ("rejected", report.rejected)):
        if n:
            log.info("drop-ins of %s: %d %s", spool, len(n), what)
    return report


def _queue_is_full(spool: Spool) -> bool:
    limit = int(spool.settings().get("max_queue") or 0)
    return limit > 0 and spool.counts()[State.ENQUEUED.name] >= limit


def _claim(spool: Spool, path: Path, inbox: Path, home: Path, name: str, hot_type: str | None) -> _Claimed | None:
    token = secrets.token_hex(8)
    dest = inbox / f"{_prefix(spool, token)}~{name}"
    try:
        os.rename(path, dest)  # the claim: of racing ingesters exactly one rename succeeds
    except FileNotFoundError:
        return None  # another ingester was faster (or the producer took it back)
    return _Claimed(dest, home, name, token, hot_type)


def _prefix(spool: Spool, token: str) -> str:
    """The claim's name: the spool's time (which every host agrees on), host, process and token."""
    return f"{int(spool.clock() * 1e9):016x}~{_HOST}~{os.getpid()}~{token}"


def _adopt(spool: Spool, inbox: Path, home: Path, hot_type: str | None, stale_after: float) -> Iterator[_Claimed]:
    """Claim again what crashed (or very slow) ingesters left in ``inbox``."""
    now = int(spool.clock() * 1e9)
    for entry in _listdir(inbox, hidden=True):
        parts = entry.split("~", 4)
        if len(parts) != 5 or len(parts[0]) != 16 or not parts[2].isdigit():
            continue  # not a claim name: nothing of ours
        stamp, host, pid, token, name = parts
        try:
            age = (now - int(stamp, 16)) / 1e9
        except ValueError:
            continue
        if host == _HOST and int(pid) == os.getpid():
            wait = RETRY_AFTER  # left by this process (an error, or an id still reserved): not in a busy loop
        elif host == _HOST and not _alive(int(pid)):
            wait = 0.0  # its claimer died
        else:
            wait = stale_after  # its claimer may still be at work
        if age < min(wait, stale_after):
            continue
        dest = inbox / f"{_prefix(spool, token)}~{name}"
        try:
            os.rename(inbox / entry, dest)  # adopt: of racing adopters exactly one rename succeeds
        except FileNotFoundError:
            continue
        log.warning("recovering drop-in %s left by process %s after %.0f s", name, pid, age)
        yield _Claimed(dest, home, name, token, hot_type)


def _process(spool: Spool, claimed: _Claimed, report: IngestReport, full: bool) -> bool:
    """Ingest one claimed drop-in; return whether the queue was found full."""
    try:
        if _put_back_leftover(claimed):
            return full
        if full:
            raise QueueFull(spool, 0)
        if claimed.hot_type is None:
            type_id, task_id, recovered = _ingest_document(spool, claimed)
        else:
            type_id, task_id, recovered = _ingest_hot(spool, claimed)
    except QueueFull:
        _put_back(claimed)
        report.deferred.append(claimed.shown)
        return True
    except Rejected as exc:
        _reject(spool, claimed, str(exc))
        report.rejected.append((claimed.shown, str(exc)))
        return full
    except Later as exc:
        log.warning("drop-in %s: %s", claimed.shown, exc)
        report.deferred.append(claimed.shown)  # stays claimed: adopted again after RETRY_AFTER
        return full
    except FileNotFoundError:
        return full  # adopted by another ingester meanwhile: it finishes the job
    except (OSError, SpoolError) as exc:
        log.error("drop-in %s stays in %s for a later ingest: %s", claimed.shown, claimed.path.parent, exc)
        return full
    (report.recovered if recovered else report.enqueued).append((type_id, task_id))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(claimed.path)  # done: a crash before this line is recovered by the marker
    return full


def _ingest_document(spool: Spool, claimed: _Claimed) -> tuple[str, str, bool]:
    data, written = _read_document(claimed.path)
    digest = hashlib.sha256(data).hexdigest()
    doc = parse_document(data)
    type_id = doc["type"]
    if "id" in doc:
        task_id = doc["id"]
    elif claimed.name.endswith(".json"):
        task_id = claimed.name[: -len(".json")]
    else:
        raise Rejected(f'file name {claimed.name!r} does not end in .json and the document has no "id"')
    _check_ids(spool, type_id, task_id)
    not_before = doc.get("not_before")
    if isinstance(not_before, float):
        # seconds after the document was written: the same due time on every retry of this ingest
        now = spool.clock()
        not_before = max(0.0, min(written, now) + not_before - now)
    marker = f"[drop-in {claimed.name} sha256:{digest} ingest:{claimed.token}]"
    recovered = _enqueue(
        spool,
        type_id,
        task_id,
        doc.get("input"),
        marker,
        claimed.token,
        priority=doc.get("priority"),
        not_before=not_before,
    )
    return type_id, task_id, recovered


def _ingest_hot(spool: Spool, claimed: _Claimed) -> tuple[str, str, bool]:
    type_id, task_id = claimed.hot_type or "", claimed.name
    st = os.lstat(claimed.path)
    if not stat.S_ISREG(st.st_mode):
        raise Rejected(f"{fsio.kind(st.st_mode)}, not a regular file; only files can go into a hot folder")
    _check_ids(spool, type_id, task_id)
    dest = spool.files_dir(type_id, task_id) / claimed.name
    moved = False
    try:
        linked = _same(claimed.path, dest)
        if st.st_nlink > (2 if linked else 1):
            raise Rejected(
                f"the file has {st.st_nlink - (1 if linked else 0)} hard links, so its producer could still "
                "change it; drop a copy (or move the file) instead of linking it"
            )
        if not linked:
            owner = _marked_by(spool, type_id, task_id)
            if owner is not None and owner != claimed.token:
                raise Rejected(_duplicate(type_id, task_id))
            dest.parent.mkdir(mode=0o770, exist_ok=True)
            _check_real_dir(dest.parent)  # a link planted in files/ must not take the file out of the spool
            moved = _store(claimed.path, dest)
        marker = f"[drop-in {type_id}/{claimed.name} size:{st.st_size} ingest:{claimed.token}]"
        recovered = _enqueue(spool, type_id, task_id, str(dest.absolute()), marker, claimed.token)
    except (Rejected, QueueFull, Later):
        if moved:
            os.rename(dest, claimed.path)  # undo the move: the drop-in keeps its claimed name
        elif _same(claimed.path, dest):
            os.unlink(dest)  # our own link: the drop-in keeps its claimed name
        with contextlib.suppress(OSError):
            os.rmdir(dest.parent)  # only if empty: another task's files stay
        raise
    return type_id, task_id, recovered


def _store(path: Path, dest: Path) -> bool:
    """Give the task its file: hard-link ``path`` as ``dest``; return True if it had to be moved instead."""
    try:
        os.link(path, dest, follow_symlinks=False)  # fails if dest exists: never replaces a file another task owns
    except FileExistsError:
        raise Rejected(f"a file {str(dest)!r} is already stored for another task of that id") from None
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise Rejected("the hot folder is on another file system than the spool's files/ directory") from None
        if exc.errno not in _LINK_UNSUPPORTED or os.path.lexists(dest):
            raise
        # no hard links on this file system: a crash between this rename and the enqueue orphans the file
        os.rename(path, dest)
        return True
    return False


def _enqueue(
    spool: Spool,
    type_id: str,
    task_id: str,
    input: Any,
    marker: str,
    token: str,
    *,
    priority: int | None = None,
    not_before: datetime | float | None = None,
) -> bool:
    """Enqueue once; return True if an earlier ingest of this very drop-in already did."""
    for _ in range(3):
        try:
            spool.enqueue(type_id, task_id, input, message=marker, priority=priority, not_before=not_before)
            return False
        except TaskExists:
            owner = _marked_by(spool, type_id, task_id)
            if owner == token:
                return True  # our own enqueue, made before a crash: do not enqueue again
            if owner is not None or _exists(spool, type_id, task_id):
                raise Rejected(_duplicate(type_id, task_id)) from None
            # the id is taken but no task is there: an enqueue in flight, or a deleted task; look again
            time.sleep(0.01)
        except UnknownTaskType:
            raise Rejected(_unknown_type(spool, type_id)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise Rejected(str(exc)) from None
    raise Later(
        f"the id of task {type_id!r}/{task_id!r} is reserved by an enqueue that has not finished "
        "(a producer killed while enqueuing leaves this until a sweep cleans tmp/); retrying later"
    )


_TOKEN = re.compile(r" ingest:([0-9a-f]{16})\]\Z")


def _marked_by(spool: Spool, type_id: str, task_id: str) -> str | None:
    """The ingest token in an existing task's enqueue message; "" if it has none; None if no task."""
    try:
        first = spool.log(type_id, task_id)[0]
    except (TaskNotFound, FileNotFoundError):
        return None
    except SpoolError:
        return ""  # a damaged task is nobody's drop-in
    found = _TOKEN.search(first.message)
    return found.group(1) if found else ""


def _exists(spool: Spool, type_id: str, task_id: str) -> bool:
    try:
        spool.status(type_id, task_id)
    except TaskNotFound:
        return False
    return True


# --------------------------------------------------------------------------- documents


def parse_document(data: bytes) -> dict[str, Any]:
    """Parse and check a task document; return ``{"type", ["id"], ["input"], ["priority"], ["not_before"]}``.

    ``not_before`` is returned as a float (seconds after the document was
    written) or a :class:`~datetime.datetime`; a ``null`` priority or
    not_before is left out (the default).

    :raises Rejected: with the exact reason.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Rejected(f"too large: {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"not UTF-8 text: {exc}") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise Rejected(f"nested too deeply: more than {MAX_DEPTH} levels of arrays and objects")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except Rejected:
        raise
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected(f'not a JSON object but {_json_kind(doc)}; write {{"type": ..., "id": ..., "input": ...}}')
    unknown = sorted(set(doc) - DOCUMENT_KEYS)
    if unknown:
        raise Rejected(
            f"unknown key(s) {', '.join(map(repr, unknown))}; "
            "a task document has only type, id, input, priority and not_before"
        )
    if "type" not in doc:
        raise Rejected('no "type": name the task type, e.g. {"type": "SequenceSum", "input": [1, 2]}')
    for key in ("type", "id"):
        if key in doc and not isinstance(doc[key], str):
            raise Rejected(f'"{key}" must be a string, not {_json_kind(doc[key])}')
    for key in ("priority", "not_before"):
        if key in doc and doc[key] is None:
            del doc[key]  # null: the default
    if "priority" in doc:
        try:
            validate_priority(doc["priority"])
        except ValueError:
            raise Rejected(
                f'"priority" must be a whole number from 0 (least urgent) to 9 (most urgent), '
                f"not {_shown(doc['priority'])}"
            ) from None
    if "not_before" in doc:
        doc["not_before"] = _document_not_before(doc["not_before"])
    return doc


def _document_not_before(value: Any) -> datetime | float:
    try:
        if isinstance(value, str):
            return parse_time(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return check_delay(float(value))
    except ValueError as exc:
        raise Rejected(f'"not_before": {exc}') from None
    raise Rejected(
        '"not_before" must be a number of seconds (after the document was written) or an ISO 8601 time '
        f'such as "2026-11-29T12:00:00+01:00", not {_json_kind(value)}'
    )


def check_delay(seconds: float) -> float:
    """Check a delay in seconds from now; return it.

    :raises ValueError: negative, not finite, or more than :data:`MAX_DELAY`.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"a delay must be a finite number of seconds, not {seconds!r}")
    if seconds < 0:
        raise ValueError(f"a delay must not be negative ({seconds:g} s); give the seconds from now to wait")
    if seconds > MAX_DELAY:
        raise ValueError(f"a delay of {seconds:g} s is more than 100 years; give a shorter one")
    return seconds


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``2026-11-29T12:00:00``, ``...+01:00``, ``...Z``); naive means local time.

    :raises ValueError: not such a time, or more than :data:`MAX_DELAY` ahead.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-11-29T12:00:00 (local time) "
            "or 2026-11-29T12:00:00+01:00"
        ) from None
    try:
        ahead = when.timestamp() - time.time()
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{text!r} is out of the range of times this host can represent") from None
    if ahead > MAX_DELAY:
        raise ValueError(f"{text!r} is more than 100 years from now; give an earlier time")
    return when


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, int, float, str)) or value is None else _json_kind(value)


def _depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON text (stops counting past MAX_DEPTH)."""
    depth = deepest = 0
    for found in _BRACKET.finditer(_STRING.sub("", text)):
        if found.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Rejected(f"not valid JSON for a task: key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise Rejected(f"not valid JSON: {name} is not a JSON number")


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _read_document(path: Path) -> tuple[bytes, float]:
    """The document's bytes and its modification time (the file server's clock)."""
    try:
        # O_NOFOLLOW: a symlink is never followed; O_NONBLOCK: a FIFO cannot hang the ingester
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected("a symbolic link; drop the document itself") from None
        if exc.errno == errno.ENXIO:
            raise Rejected("a FIFO or socket, not a file") from None
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)) or exc.errno == errno.EISDIR:
            raise
        raise Rejected(f"cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(f"{fsio.kind(st.st_mode)} is not a regular file")
        if st.st_size > MAX_DOCUMENT_BYTES:
            raise Rejected(f"too large: {st.st_size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)")
        chunks = []
        left = MAX_DOCUMENT_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st.st_mtime
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- outcomes


def _check_ids(spool: Spool, type_id: str, task_id: str) -> None:
    try:
        validate_id(type_id, "task type")
    except ValueError as exc:
        raise Rejected(f"bad task type: {exc}") from None
    try:
        validate_id(task_id, "task id")
    except ValueError as exc:
        raise Rejected(f"bad task id: {exc}") from None
    try:
        spool.get_type(type_id)
    except UnknownTaskType:
        raise Rejected(_unknown_type(spool, type_id)) from None


def _unknown_type(spool: Spool, type_id: str) -> str:
    names = ", ".join(repr(t.name) for t in spool.types()) or "none"
    return f"unknown task type {type_id!r} (registered types: {names})"


def _duplicate(type_id: str, task_id: str) -> str:
    return f"duplicate id: task {type_id!r}/{task_id!r} already exists in the spool (delete it first or use another id)"


def _put_back_leftover(claimed: _Claimed) -> bool:
    """True if ``claimed`` is the old name of a drop-in already put back (a crash in :func:`_put_back`)."""
    if _same(claimed.path, claimed.home / claimed.name):
        os.unlink(claimed.path)  # the file is back under its own name; it is ingested from there
        return True
    return False


def _put_back(claimed: _Claimed) -> None:
    """Return a drop-in that met a full queue to where its producer put it."""
    try:
        os.link(claimed.path, claimed.home / claimed.name, follow_symlinks=False)  # never replaces a newer drop-in
    except FileExistsError:
        return  # a new file took the name; this one waits in .ingest/ until it is adopted
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED or os.path.lexists(claimed.home / claimed.name):
            return
        os.rename(claimed.path, claimed.home / claimed.name)  # no hard links here: checked just above
        return
    os.unlink(claimed.path)


def _reject(spool: Spool, claimed: _Claimed, reason: str) -> None:
    """Move a claimed drop-in to ``drop/rejected/`` beside a ``.error`` file saying why."""
    base = claimed.name if claimed.hot_type is None else f"{claimed.hot_type}~{claimed.name}"
    _move_rejected(spool, claimed.path, base, claimed.shown, reason, claimed.token)


def _reject_long(spool: Spool, path: Path, name: str, hot_type: str | None, report: IngestReport) -> None:
    """Reject a drop-in whose name is too long to claim, straight from where it was dropped."""
    size = len(name.encode("utf-8", "surrogateescape"))
    reason = f"file name too long: {size} bytes; the limit is {MAX_NAME_BYTES} bytes"
    shown = name if hot_type is None else f"{hot_type}/{name}"
    base = _shorten(name if hot_type is None else f"{hot_type}~{name}")
    if _move_rejected(spool, path, base, shown, reason, secrets.token_hex(8)):
        report.rejected.append((shown, reason))


def _move_rejected(spool: Spool, path: Path, base: str, shown: str, reason: str, token: str) -> bool:
    folder = drop_dir(spool) / REJECTED
    folder.mkdir(mode=0o770, exist_ok=True)
    stem, dot, suffix = base.rpartition(".") if "." in base.lstrip(".") else (base, "", "")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"{reason}\nfile: drop/{shown}\nrejected: {when} on {socket.gethostname()} by pid {os.getpid()}\n"
    for name in (base, f"{stem}~{token}{dot}{suffix}", f"{stem}~{secrets.token_hex(8)}{dot}{suffix}"):
        try:
            # O_EXCL reserves the name: the .error and its drop-in never replace an earlier rejection
            fd = os.open(folder / f"{name}.error", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o660)
        except FileExistsError:
            continue
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
        try:
            os.rename(path, folder / name)  # within the spool's file system: the drop-in moves whole
        except FileNotFoundError:
            os.unlink(folder / f"{name}.error")  # taken by another ingester, which deals with it
            return False
        log.warning("rejected drop-in %s: %s", shown, reason)
        return True
    return False


# --------------------------------------------------------------------------- helpers


def _listdir(path: Path, *, hidden: bool = False) -> list[str]:
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if hidden or not n.startswith("."))


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _check_real_dir(path: Path) -> None:
    """:raises StorageError: ``path`` is a symbolic link (or a file), which is never worked through."""
    if not _real_dir(path):
        raise StorageError(
            errno.ENOTDIR, f"{path} is not a directory but a symbolic link or a file; refusing to work through it"
        )


def _hot_folder_ok(spool: Spool, folder: Path, type_id: str, report: IngestReport) -> bool:
    """Whether hot folder ``folder`` (and its ``.ingest/``) can be worked in; a link in their place is rejected.

    Hot folders live in ``drop/``, which may be open to others: one of them
    could put a symbolic link there (to /etc, say). It is moved to
    ``rejected/`` as it is, never followed, and the real folder is made
    again by the next ingest.
    """
    for path in (folder, folder / INGEST):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if path == folder:
                return False  # no hot folder: nothing to ingest
            continue  # no .ingest/ yet: made when the first file is claimed
        if stat.S_ISDIR(mode):
            continue
        kind = "a file" if stat.S_ISREG(mode) else fsio.kind(mode)
        reason = f"{kind} in place of the hot folder of task type {type_id!r} (or its {INGEST}/); never followed"
        shown = os.path.relpath(path, drop_dir(spool))
        if _move_rejected(spool, path, shown.replace(os.sep, "~"), shown, reason, secrets.token_hex(8)):
            report.rejected.append((shown, reason))
        return False
    return True


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True  # gone: nothing to do with it


def _is_file(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _too_long(name: str) -> bool:
    return len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES


def _shorten(name: str) -> str:
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{name.encode('utf-8', 'surrogateescape')[:100].decode('utf-8', 'ignore')}~{digest}"
