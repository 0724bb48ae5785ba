"""The web dashboard (``spoolatp web``): EOxServer's ATP views over a spool, read-only by default.

Routes::

    GET  /                                     overview: counts per state and type, oldest waiting
                                               task, throughput over the last hour, daemons
    GET  /tasks?state=&type=&q=&page=&size=    task list, newest first, filtered and paginated
    GET  /tasks/<TYPE>/<ID>                    one task: state, progress, whole log, response
    GET  /tasks/<TYPE>/<ID>/response           the stored response, as a download with its MIME type
    POST /tasks/<TYPE>/<ID>/delete             action: delete the task (token required)
    POST /tasks/<TYPE>/<ID>/retry              action: re-enqueue a FAILED task (token required)
    GET  /static/...                           the page's own CSS and JavaScript (no CDN)

TYPE and ID are percent-encoded path segments. Every page carries a ``#live``
element that ``app.js`` fetches again every few seconds and swaps in place,
so pages refresh without a full reload and without JavaScript they still work.

**Escaping.** Pages are rendered by Jinja2 with autoescaping on, so an id, log
message or response holding HTML is shown as text; the Content-Security-Policy
forbids inline scripts besides, and a downloaded response is sent as an
attachment in a sandbox, so a response of type ``text/html`` never runs in the
dashboard's origin.

**Reading never writes.** The dashboard opens a spool that must exist, reads
journals and task files without quarantining what it cannot read, unpickles
the enqueue record with an unpickler that imports nothing, and judges ages by
this host's clock (``Spool.clock`` writes a probe file).

**Cost with a large spool.** State directories are listed again only when
their mtime changed (a large one that keeps changing at most once a second;
an unchanged one every :data:`RELIST_MAX` seconds); the names say the state,
type, id and enqueue time, so counts, the oldest waiting task and the filtered
list come from the names alone. Only the page's rows open a journal. Throughput needs each ended
task's end time: the mtime of its journal, stat-ed once per task and kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import io
import ipaddress
import json
import mimetypes
import os
import pickle
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import jinja2
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers, MutableHeaders
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"the web dashboard needs the 'web' extra: pip install 'spoolatp[web]' ({exc})") from exc

from spoolatp import fsio
from spoolatp.errors import CorruptTaskFile, ResponseNotFound, SpoolError, TaskNotFound
from spoolatp.format import RESPONSE_MAGIC, TASK_MAGIC, LogRecord, State, journal_offset, key_time, parse_key, unseal
from spoolatp.spool import Spool

#: seconds between refreshes of a page's live part (a finished task's page: ENDED_REFRESH)
REFRESH = 2.0
ENDED_REFRESH = 10.0
#: a changed directory is listed again at once, unless listing it took long: then after
#: RELIST_COST times as long as it took, and at most RELIST_MIN seconds later ...
RELIST_MIN, RELIST_COST = 1.0, 10.0
#: ... and an unchanged one at least this often, in case its mtime did not show a change (NFS)
RELIST_MAX = 30.0
#: a listing taken less than this long after the directory's mtime may have missed a change in the same tick
RACY = 1.0
#: tasks per page of the list, by default and at most
PAGE_SIZE, PAGE_MAX = 50, 500
#: the largest response shown on a task's page; larger ones are only offered as downloads
TEXT_LIMIT = 256 * 1024
#: the largest form a POST may send
FORM_LIMIT = 16 * 1024
TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-ndjson")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HERE = Path(__file__).parent

Entry = tuple[str, str, str, State, "str | None"]  # key, type, id, state, server


# --------------------------------------------------------------------------- reading the spool cheaply


class _Listing:
    """The sorted names in one directory, listed again only when the directory changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: list[str] = []
        self.version = 0
        self._stamp: tuple[int, int] | None = None
        self._listed = float("-inf")  # this host's time when the kept listing started
        self._cost = 0.0  # seconds the last listing took

    def get(self) -> list[str]:
        now = time.time()
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            # a change in the same mtime tick as the listing leaves the mtime as it was: trust it once settled
            settled = self._listed - st.st_mtime > RACY
        except FileNotFoundError:
            stamp, settled = None, True
        age = now - self._listed
        if stamp == self._stamp and settled:
            if age < RELIST_MAX:
                return self.names
        elif age < min(RELIST_MIN, RELIST_COST * self._cost):
            return self.names  # a large directory that keeps changing: spend a bounded share of the time
        try:
            names = sorted(n for n in os.listdir(self.path) if n[:1] != ".")
        except (FileNotFoundError, NotADirectoryError):
            names = []
        self._stamp, self._listed, self._cost = stamp, now, time.time() - now
        if names != self.names:
            self.names = names
            self.version += 1
        return self.names


class _Index:
    """What the names in the state directories tell: every task's key, type, id, state and holder.

    One lock guards the caches; the threads serving requests share one index.
    """

    def __init__(self, root: Path, journal_file: Callable[[], str]) -> None:
        self.root = root
        self.journal_file = journal_file  # Spool.journal_file: "task" (format 2) or "journal" (format 1)
        self.lock = threading.Lock()
        self._listings: dict[Path, _Listing] = {}
        self._parsed: dict[str, tuple[str, str] | None] = {}
        self._entries: dict[State, tuple[tuple[Any, ...], list[Entry]]] = {}
        self._merged: tuple[tuple[Any, ...], list[Entry]] = ((), [])
        self._by_type: dict[State, tuple[tuple[Any, ...], Counter[str]]] = {}
        self._ends: dict[State, tuple[tuple[Any, ...], dict[str, float]]] = {}
        #: the ENQUEUED entries that wait in delayed/ (not before a time), as of its last listing: KEY -> name there
        self.delayed: dict[str, str] = {}

    def _listing(self, path: Path) -> _Listing:
        if path not in self._listings:
            self._listings[path] = _Listing(path)
        return self._listings[path]

    def _parse(self, key: str) -> tuple[str, str] | None:
        if key not in self._parsed:
            try:
                self._parsed[key] = parse_key(key)
            except ValueError:  # a stray file: not a task, not counted
                self._parsed[key] = None
        return self._parsed[key]

    def entries(self, state: State) -> tuple[tuple[Any, ...], list[Entry]]:
        """``(signature, entries)`` of one state, oldest first; the signature changes with them.

        ENQUEUED includes ``delayed/`` (tasks waiting for their start time or a retry), named there
        ``NOTBEFORE~KEY``.
        """
        base = self.root / state.name.lower()
        if state in (State.SCHEDULED, State.RUNNING):
            servers = self._listing(base).get()
            parts: list[tuple[str | None, _Listing]] = [(server, self._listing(base / server)) for server in servers]
        else:
            parts = [(None, self._listing(base))]
        if state is State.ENQUEUED:
            parts.append((None, self._listing(self.root / "delayed")))
        names = [(server, listing.get()) for server, listing in parts]
        signature = tuple((server, id(listing), listing.version) for server, listing in parts)
        cached = self._entries.get(state)
        if cached is not None and cached[0] == signature:
            return cached
        out: list[Entry] = []
        for n, (server, keys) in enumerate(names):
            if state is State.ENQUEUED and n == 1:  # delayed/NOTBEFORE~KEY; a name without a key parses as none
                self.delayed = {name.partition("~")[2]: name for name in keys}
                keys = list(self.delayed)
            for key in keys:
                parsed = self._parse(key)
                if parsed is not None:
                    out.append((key, parsed[0], parsed[1], state, server))
        if len(names) > 1:
            out.sort(key=lambda e: e[0])
        self._entries[state] = (signature, out)
        if len(self._parsed) > 2 * sum(len(e[1]) for e in self._entries.values()) + 1000:
            live = {e[0] for _, es in self._entries.values() for e in es}
            self._parsed = {k: v for k, v in self._parsed.items() if k in live}
        return signature, out

    def all_entries(self) -> list[Entry]:
        """Every task, oldest first (merged from the states' sorted lists)."""
        parts = [self.entries(state) for state in State]
        signature = tuple(sig for sig, _ in parts)
        if self._merged[0] != signature:
            merged = [e for _, es in parts for e in es]
            merged.sort(key=lambda e: e[0])  # sorted runs: timsort merges them in linear time
            self._merged = (signature, merged)
        return self._merged[1]

    def by_type(self, state: State) -> Counter[str]:
        signature, entries = self.entries(state)
        cached = self._by_type.get(state)
        if cached is None or cached[0] != signature:
            cached = (signature, Counter(e[1] for e in entries))
            self._by_type[state] = cached
        return cached[1]

    def ends(self, state: State) -> dict[str, float]:
        """When each task of a terminal state ended: its journal's mtime, stat-ed once per task."""
        signature, entries = self.entries(state)
        cached = self._ends.get(state)
        if cached is not None and cached[0] == signature:
            return cached[1]
        old = cached[1] if cached else {}
        base = self.root / state.name.lower()
        times: dict[str, float] = {}
        journal = self.journal_file()  # its mtime is the task's last journal line
        for e in entries:
            key = e[0]
            if key in old:
                times[key] = old[key]
                continue
            for path in (base / key / journal, base / key):
                try:
                    times[key] = os.stat(path, follow_symlinks=False).st_mtime
                    break
                except OSError:
                    continue
        self._ends[state] = (signature, times)
        return times


def _due(delayed_name: str | None, now: float) -> bool:
    """Whether an ENQUEUED task may start at ``now``: not delayed, or its NOTBEFORE (16 hex digits, ns) passed."""
    if delayed_name is None:
        return True
    try:
        return int(delayed_name[:16], 16) / 1e9 <= now
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Tasks that ended in each of the last 60 minutes (the last one is the current minute)."""

    start: float
    finished: list[int]
    failed: list[int]

    @property
    def peak(self) -> int:
        return max([f + g for f, g in zip(self.finished, self.failed, strict=True)] + [1])

    def bars(self, height: float = 100.0) -> list[dict[str, Any]]:
        """Bar geometry for the chart: one per minute, FAILED stacked on FINISHED."""
        scale = height / self.peak
        out = []
        for i, (fin, fail) in enumerate(zip(self.finished, self.failed, strict=True)):
            h_fin, h_fail = fin * scale, fail * scale
            out.append(
                {
                    "x": i * 10,
                    "fin_y": height - h_fin,
                    "fin_h": h_fin,
                    "fail_y": height - h_fin - h_fail,
                    "fail_h": h_fail,
                    "finished": fin,
                    "failed": fail,
                    "minute": _utc(self.start + 60 * i, "%H:%M"),
                }
            )
        return out


def throughput(ends: dict[State, dict[str, float]], now: float) -> Throughput:
    """Bin end times into the 60 minutes up to ``now``, aligned to whole minutes."""
    start = (now // 60) * 60 - 59 * 60
    bins = {State.FINISHED: [0] * 60, State.FAILED: [0] * 60}
    for state, times in ends.items():
        counts = bins[state]
        for t in times.values():
            i = int((t - start) // 60)
            if 0 <= i < 60:
                counts[i] += 1
            elif 60 <= i < 61:  # stamped by a file server a little ahead of this host: this minute
                counts[59] += 1
    return Throughput(start, bins[State.FINISHED], bins[State.FAILED])


# --------------------------------------------------------------------------- one task


class _Opaque:
    """Stands in for every class a pickled record names: unpickling imports and runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Opaque


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The enqueue record of the task directory ``path``, or ``(None, why)``; never quarantines.

    The input's classes are replaced by inert stand-ins, so no code of the
    producer's runs here; only ``enqueued`` and ``message`` are used.
    """
    file = path / "task"
    try:
        data = fsio.read_file(file)  # never through a link, never waiting on a FIFO planted there
    except FileNotFoundError:
        raise
    except OSError as exc:
        return None, f"task file unreadable: {exc}"
    if not data and (odd := fsio.not_regular(file)):  # a FIFO reads as b""
        return None, f"task file damaged: task is {odd}, not a regular file (planted?)"
    with contextlib.suppress(ValueError):  # format 2: the journal lines after the record; unseal judges the header
        data = data[: journal_offset(data)]
    try:
        payload, _ = unseal(TASK_MAGIC, data, file)
        record = _InertUnpickler(io.BytesIO(payload)).load()
    except CorruptTaskFile as exc:
        return None, f"task file damaged: {exc.reason}"
    except Exception as exc:
        return None, f"task file unreadable: {type(exc).__name__}: {exc}"
    if not isinstance(record, dict):
        return None, "task file holds no record"
    return record, None


@dataclasses.dataclass(frozen=True)
class ResponseView:
    """What a task's page says about its response."""

    mime: str
    size: int
    text: str | None  # the response, when it is text and small enough to show
    note: str  # why it is not shown, or ""


def read_response(path: Path) -> ResponseView | None:
    """The response in task directory ``path``: its header always, its text when it is small text."""
    file = path / "response"
    try:
        with open(file, "rb", opener=fsio.nofollow) as f:  # never through a link, never waiting on a FIFO
            head = f.readline(4096)
            parts = head.rstrip(b"\n").split(b" ", 4)
            try:
                size = int(parts[2])
                meta = json.loads(parts[4]) if len(parts) > 4 else {}
                if parts[0] != RESPONSE_MAGIC or not isinstance(meta, dict):
                    raise ValueError
            except (ValueError, IndexError):
                return ResponseView("application/octet-stream", 0, None, "the response file is damaged")
            mime, kind = str(meta.get("mime", "application/octet-stream")), meta.get("kind")
            if size > TEXT_LIMIT:
                return ResponseView(mime, size, None, f"larger than {TEXT_LIMIT // 1024} KiB: download it")
            f.seek(0)
            data = f.read(len(head) + size + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link, or a FIFO (no seek) planted there
        return ResponseView("application/octet-stream", 0, None, f"the response file is unreadable: {exc}")
    try:
        payload, _ = unseal(RESPONSE_MAGIC, data, file)
    except CorruptTaskFile as exc:
        return ResponseView(mime, size, None, f"the response file is damaged: {exc.reason}")
    if kind != "str" and not is_text(mime):
        return ResponseView(mime, size, None, "binary: download it")
    try:
        return ResponseView(mime, size, payload.decode("utf-8"), "")
    except UnicodeDecodeError:
        return ResponseView(mime, size, None, "not UTF-8 text: download it")


def is_text(mime: str) -> bool:
    base = mime.split(";")[0].strip().lower()
    return base.startswith("text/") or base in TEXT_TYPES or base.endswith(("+xml", "+json"))


@dataclasses.dataclass(frozen=True)
class TaskView:
    """Everything a task's page shows."""

    type_id: str
    task_id: str
    key: str
    state: State
    holder: str | None  # the server holding it, or the last one that ran it
    attempts: int
    restarts: int
    enqueued: float
    updated: float
    progress: float | None
    progress_message: str | None
    log: list[LogRecord]
    response: ResponseView | None


def _summary(key: str, journal: list[LogRecord], server: str | None) -> dict[str, Any]:
    attempts = sum(1 for r in journal if r.state is State.SCHEDULED)
    progress = [r for r in journal if r.progress is not None]
    servers = [r.server for r in journal if r.server]
    enqueued = key_time(key)
    return {
        "holder": server or (servers[-1] if servers else None),
        "attempts": attempts,
        "restarts": max((r.restart or 0 for r in journal), default=0),
        "enqueued": enqueued,
        "updated": journal[-1].time if journal else enqueued,
        "progress": progress[-1].progress if progress else None,
        "progress_message": progress[-1].message if progress else None,
    }


# --------------------------------------------------------------------------- the dashboard


class Dashboard:
    """The read side: what the pages show, computed from a spool without changing it."""

    def __init__(self, spool_path: str | os.PathLike[str]) -> None:
        path = Path(spool_path)
        if not (path / "spool.json").is_file():
            raise FileNotFoundError(
                f"no spool at {path} (create one with `spoolatp --spool {path} init`, or point --spool at one)"
            )
        self.spool = Spool(path)  # creates nothing in a spool that exists
        self.index = _Index(self.spool.path, lambda: self.spool.journal_file)

    def _task_path(self, state: State, server: str | None, key: str) -> Path:
        base = self.spool.path / state.name.lower()
        if server:
            return base / server / key
        path = base / key
        if state is State.ENQUEUED and not path.is_dir():  # delayed: delayed/NOTBEFORE~KEY
            name = self.index.delayed.get(key)
            if name is not None:
                return self.spool.path / "delayed" / name
            with contextlib.suppress(FileNotFoundError):  # not in the index's listing: look for it
                return self.spool._locate(key)[0]
        return path

    def overview(self) -> dict[str, Any]:
        now = time.time()
        with self.index.lock:
            counts = {s.name: len(self.index.entries(s)[1]) for s in State}
            types: dict[str, dict[str, int]] = {t.name: {s.name: 0 for s in State} for t in self.spool.types()}
            for s in State:
                for type_id, n in self.index.by_type(s).items():
                    types.setdefault(type_id, {x.name: 0 for x in State})[s.name] = n
            waiting = self.index.entries(State.ENQUEUED)[1]
            # the oldest that may start now: a delayed task waits for its time, not for a worker, until it is due
            first = next((e for e in waiting if _due(self.index.delayed.get(e[0]), now)), None)
            chart = throughput({s: self.index.ends(s) for s in (State.FINISHED, State.FAILED)}, now)
        oldest = None if first is None else {"type_id": first[1], "task_id": first[2], "age": now - _stamp(first[0])}
        daemons = []
        for beat in self.spool.daemons():
            running = []
            for key in beat.get("running") or []:
                with contextlib.suppress(ValueError, TypeError):
                    running.append(parse_key(str(key)))
            daemons.append(
                {
                    "server": str(beat.get("server", "?")),
                    "host": str(beat.get("host") or "–"),
                    "pid": str(beat.get("pid") or "–"),
                    "workers": str(beat.get("workers") or "–"),
                    "state": str(beat.get("state") or "?"),
                    "beat": _float(beat.get("beat"), now),
                    "age": now - _float(beat.get("beat"), now),
                    "running_tasks": running,
                }
            )
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "types": dict(sorted(types.items())),
            "oldest": oldest,
            "chart": chart,
            "daemons": daemons,
            "quarantined": sum(1 for n in _names(self.spool.path / "quarantine") if not n.endswith(".reason")),
            "now": now,
        }

    def hosts(self) -> dict[str, str]:
        return {str(d.get("server")): str(d.get("host")) for d in self.spool.daemons() if d.get("host")}

    def select(
        self, state: State | None, type_id: str | None, query: str, page: int, size: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the tasks that match, newest first, and how many match in all."""
        with self.index.lock:
            entries = self.index.entries(state)[1] if state is not None else self.index.all_entries()
            if type_id or query:
                needle = query.casefold()
                matches = [
                    e for e in entries if (not type_id or e[1] == type_id) and (not needle or needle in e[2].casefold())
                ]
            else:
                matches = entries
        total = len(matches)
        end = max(0, total - (page - 1) * size)
        chosen = matches[max(0, end - size) : end][::-1]
        hosts = self.hosts()
        rows = []
        for key, t, i, st, server in chosen:
            journal = self.spool._journal(self._task_path(st, server, key))  # the page's rows only
            row = {"type_id": t, "task_id": i, "key": key, "state": st, **_summary(key, journal, server)}
            row["host"] = hosts.get(row["holder"] or "")
            rows.append(row)
        return rows, total

    def task(self, type_id: str, task_id: str) -> TaskView:
        """:raises TaskNotFound: :raises ValueError: not a valid type or id."""
        for _ in range(10):
            info = self.spool.info(type_id, task_id)
            path = self._task_path(info.state, info.server, info.key)
            try:
                record, trouble = read_record(path)
            except FileNotFoundError:
                if not path.is_dir():  # it moved on meanwhile: find it again
                    continue
                record, trouble = None, "task file missing"
            journal = self.spool._journal(path)
            response = read_response(path)
            if not path.is_dir():  # moved while we read: what we read may be from either side
                continue
            enqueued = _stamp(info.key)
            if record is not None:
                first = LogRecord(
                    _float(record.get("enqueued"), enqueued), State.ENQUEUED, str(record.get("message") or "enqueued")
                )
            else:
                first = LogRecord(enqueued, State.ENQUEUED, f"enqueued ({trouble})")
            s = _summary(info.key, journal, info.server)
            return TaskView(type_id, task_id, info.key, info.state, log=[first, *journal], response=response, **s)
        raise TaskNotFound(type_id, task_id, self.spool)

    def task_types(self) -> list[str]:
        with self.index.lock:
            seen = {t for s in State for t in self.index.by_type(s)}
        return sorted(seen | {t.name for t in self.spool.types()})


# --------------------------------------------------------------------------- HTTP


def task_url(type_id: str, task_id: str, suffix: str = "") -> str:
    return f"/tasks/{urllib.parse.quote(type_id, safe='')}/{urllib.parse.quote(task_id, safe='')}{suffix}"


def tasks_url(**params: Any) -> str:
    """``/tasks`` with the given filters; empty ones and page 1 are left out."""
    query = {k: v for k, v in params.items() if v not in (None, "") and not (k == "page" and v == 1)}
    return "/tasks" + ("?" + urllib.parse.urlencode(query) if query else "")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}" if seconds < 10 * size else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _utc(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    if t is None:
        return "–"
    return time.strftime(fmt, time.gmtime(t))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # everything from the spool is escaped: ids, messages, responses
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(task_url=task_url, tasks_url=tasks_url, states=list(State), version=_version())
    env.filters.update(age=_age, utc=_utc, size=_size)
    return env


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("spoolatp")
    except Exception:
        return "0"


class _Guard:
    """Security headers on every response; with ``hosts``, refuse other Host headers (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str] | None) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts} if hosts is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None and _hostname(Headers(scope=scope).get("host", "")) not in self.hosts:
            await PlainTextResponse("unexpected Host header; open the dashboard by the address it binds to", 400)(
                scope, receive, send
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if not scope["path"].startswith("/static/"):  # pages change; assets change with the version
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _App:
    """The endpoints; ``Dashboard`` does the reading."""

    def __init__(self, dash: Dashboard, allow_actions: bool, token: str | None) -> None:
        self.dash = dash
        self.allow_actions = allow_actions
        self.token = token
        self.env = _environment()

    def page(self, request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("refresh", REFRESH)
        context.setdefault("nav", "")
        body = self.env.get_template(name).render(
            spool_path=str(self.dash.spool.path), actions=self.allow_actions, **context
        )
        return HTMLResponse(body, code)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status, status=status, message=message, refresh=0)

    # ------------------------------------------------------------------ pages

    def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", nav="overview", **self.dash.overview())

    def tasks(self, request: Request) -> Response:
        q = request.query_params
        try:
            state = State.parse(q["state"]) if q.get("state") else None
            page = max(1, int(q.get("page") or 1))
            size = min(PAGE_MAX, max(1, int(q.get("size") or PAGE_SIZE)))
        except ValueError as exc:
            return self.error(request, 400, str(exc))
        type_id, query = q.get("type") or None, (q.get("q") or "").strip()[:200]
        rows, total = self.dash.select(state, type_id, query, page, size)
        pages = max(1, -(-total // size))
        return self.page(
            request,
            "tasks.html",
            nav="tasks",
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            size=size,
            state=state,
            type_id=type_id,
            query=query,
            types=self.dash.task_types(),
            now=time.time(),
            link=lambda **kw: tasks_url(
                **{
                    "state": state.name if state else None,
                    "type": type_id,
                    "q": query,
                    "size": size if size != PAGE_SIZE else None,
                    **kw,
                }
            ),
        )

    def task(self, request: Request) -> Response:
        type_id, task_id = request.path_params["type_id"], request.path_params["task_id"]
        try:
            view = self.dash.task(type_id, task_id)
        except TaskNotFound:
            return self.error(request, 404, f"task {type_id!r}/{task_id!r} is not in the spool (deleted or retired?)")
        except ValueError as exc:
            return self.error(request, 400, str(exc))
        refresh = ENDED_REFRESH if view.state.terminal else REFRESH
        return self.page(request, "task.html", nav="tasks", task=view, now=time.time(), refresh=refresh)

    def response(self, request: Request) -> Response:
        type_id, task_id = request.path_params["type_id"], request.path_params["task_id"]
        try:
            body, mime = self.dash.spool.response(type_id, task_id)
        except (TaskNotFound, ResponseNotFound) as exc:
            return self.error(request, 404, str(exc))
        except CorruptTaskFile as exc:  # before ValueError, which it also is
            return self.error(request, 500, str(exc))
        except ValueError as exc:
            return self.error(request, 400, str(exc))
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if not _sane_mime(mime):
            mime = "application/octet-stream"
        extension = mimetypes.guess_extension(mime.split(";")[0].strip()) or ".bin"
        name = f"{type_id}-{task_id}{extension}"
        ascii_name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
        encoded = urllib.parse.quote(name, safe="")
        headers = {
            # a response of type text/html must not run in the dashboard's origin: download it, sandboxed
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        return Response(data, media_type=mime, headers=headers)

    # ------------------------------------------------------------------ actions

    async def _refusal(self, request: Request) -> Response | None:
        """Why an action is refused (an error page), or None if it may go ahead."""
        if not self.allow_actions or not self.token:
            message = "actions are off: this dashboard is read-only (start it with --allow-actions and a token)"
            return self.error(request, 403, message)
        given = (await _form(request)).get("token") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.error(request, 403, "wrong or missing token: the task was not changed")
        return None

    async def delete(self, request: Request) -> Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        type_id, task_id = request.path_params["type_id"], request.path_params["task_id"]
        try:
            await run_in_threadpool(self.dash.spool.delete, type_id, task_id)
        except TaskNotFound as exc:
            return self.error(request, 404, str(exc))
        except (ValueError, SpoolError, OSError) as exc:
            return self.error(request, 400 if isinstance(exc, ValueError) else 500, str(exc))
        return self.page(request, "done.html", message=f"task {type_id!r}/{task_id!r} deleted", refresh=0)

    async def retry(self, request: Request) -> Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        type_id, task_id = request.path_params["type_id"], request.path_params["task_id"]
        try:
            await run_in_threadpool(
                self.dash.spool.rerun, type_id, task_id, "re-run requested from the web dashboard", "web dashboard"
            )
        except TaskNotFound as exc:
            return self.error(request, 404, str(exc))
        except (ValueError, SpoolError, OSError) as exc:
            return self.error(request, 409, str(exc))
        return RedirectResponse(task_url(type_id, task_id), 303)


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (no multipart parser needed), at most FORM_LIMIT bytes."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return {}
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def make_app(
    spool_path: str | os.PathLike[str],
    allow_actions: bool = False,
    token: str | None = None,
    *,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard as an ASGI application.

    :param allow_actions: offer delete and re-enqueue; needs ``token``.
    :param token: the secret an action must carry (form field ``token`` or ``Authorization: Bearer``).
    :param allowed_hosts: Host header names to accept (``None``: any); :func:`serve` passes the
        loopback names when it binds to a loopback address.
    :raises FileNotFoundError: no spool at ``spool_path``.
    :raises ValueError: actions without a token.
    """
    if allow_actions and not token:
        raise ValueError("actions need a token: pass --allow-actions together with a non-empty token")
    app = _App(Dashboard(spool_path), allow_actions, token)
    routes = [
        Route("/", app.overview),
        Route("/tasks", app.tasks),
        Route("/tasks/{type_id}/{task_id}", app.task),
        Route("/tasks/{type_id}/{task_id}/response", app.response),
        Route("/tasks/{type_id}/{task_id}/delete", app.delete, methods=["POST"]),
        Route("/tasks/{type_id}/{task_id}/retry", app.retry, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "web_static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, hosts=allowed_hosts)])


def serve(
    spool_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8023,
    allow_actions: bool = False,
    token: str | None = None,
) -> None:
    """Serve the dashboard with uvicorn until SIGINT or SIGTERM.

    Bound to a loopback address, it answers only requests addressed to a
    loopback name, so a web page elsewhere cannot read it by DNS rebinding.
    """
    hosts = [*LOOPBACK_NAMES, host] if _is_loopback(host) else None
    app = make_app(spool_path, allow_actions, token, allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, timeout_graceful_shutdown=3)


# --------------------------------------------------------------------------- helpers


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _sane_mime(mime: str) -> bool:
    return 0 < len(mime) < 200 and mime.isascii() and mime.isprintable() and "/" in mime and "\n" not in mime


def _stamp(key: str) -> float:
    return key_time(key)


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _names(path: Path) -> list[str]:
    try:
        return [n for n in os.listdir(path) if n[:1] != "."]
    except (FileNotFoundError, NotADirectoryError):
        return []
