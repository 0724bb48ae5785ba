"""The ``spoolatp`` command: every spool operation from a shell.

Exit codes (also in ``docs/cli.md``)::

    0    success
    1    any other error (bad input, unknown type, task exists, no response, I/O)
    2    usage error (click's: a bad option or argument)
    3    task not found
    4    queue full
    5    the task ended FAILED (``wait``, ``enqueue --wait``, ``demo``)
    6    ``wait`` timed out before the task ended
    130  interrupted (Ctrl-C)

An error is one line on stderr, ``spoolatp: error: ...``; ``--debug`` adds
the traceback. Every command that prints data takes ``--json`` and then
prints exactly one JSON document with stable keys on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import getpass
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from spoolatp import dropin
from spoolatp.errors import QueueFull, ResponseNotFound, SpoolError, TaskNotFound
from spoolatp.format import DEFAULT_PRIORITY, State, TaskInfo, key_priority
from spoolatp.spool import Spool, default_spool_path

F = TypeVar("F", bound=Callable[..., Any])

#: throughput windows of ``stats``, in minutes
WINDOWS = (1, 5, 15)
DEMO_TYPE, DEMO_ID, DEMO_HANDLER = "SequenceSum", "Task001", "sequence_sum"


class Exit(enum.IntEnum):
    """The command's exit codes."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    QUEUE_FULL = 4
    TASK_FAILED = 5
    TIMEOUT = 6
    INTERRUPTED = 130


class Failure(Exception):
    """Stop the command with an exit code and a one-line message on stderr."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class _Options:
    path: Path


_debug = False


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (never raises, never prints a traceback unless --debug)."""
    global _debug
    _debug = bool(os.environ.get("SPOOLATP_DEBUG"))
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="spoolatp", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("spoolatp: interrupted", err=True)
        return Exit.INTERRUPTED
    except SystemExit as exc:  # click's own exit after a broken pipe
        return exc.code if isinstance(exc.code, int) else Exit.ERROR
    except BrokenPipeError:  # the reader went away (`spoolatp list | head`): an I/O error, said quietly
        _silence_stdout()
        return Exit.ERROR
    except Failure as exc:
        _say(str(exc))
        return exc.code
    except Exception as exc:
        code, message = _classify(exc)
        if _debug:
            traceback.print_exc()
        _say(message)
        return code
    return int(result) if isinstance(result, int) else Exit.OK


def _classify(exc: Exception) -> tuple[Exit, str]:
    if isinstance(exc, TaskNotFound):
        return Exit.NOT_FOUND, str(exc)
    if isinstance(exc, QueueFull):
        return Exit.QUEUE_FULL, str(exc)
    if isinstance(exc, (SpoolError, ValueError, OSError)):
        return Exit.ERROR, str(exc)
    hint = "" if _debug else " (run with --debug for the traceback)"
    return Exit.ERROR, f"internal error: {type(exc).__name__}: {exc}{hint}"


def _say(message: str) -> None:
    click.echo(f"spoolatp: error: {' '.join(message.split())}", err=True)


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _json_out(doc: Any) -> None:
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:  # e.g. a file name that is not UTF-8: escape instead of failing
        text = json.dumps(doc, indent=2, sort_keys=True, default=str)
    click.echo(text)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")(func)


def _open(ctx: click.Context, *, create: bool = False) -> Spool:
    from spoolatp import plugins

    opts: _Options = ctx.find_object(_Options)  # type: ignore[assignment]
    if not create and not (opts.path / "spool.json").is_file():
        raise Failure(
            Exit.ERROR,
            f"no spool at {opts.path} (create one with `spoolatp --spool {opts.path} init`, or set SPOOLATP_SPOOL)",
        )
    return Spool(opts.path, on_event=plugins.notify)


def _logging(level: int, *, daemon: bool = False) -> None:
    """Log to stderr: a daemon's log with times and tracebacks; a command's in single lines."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    if daemon or _debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLine("spoolatp: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class _OneLine(logging.Formatter):
    """A log line without traceback: a command's errors are one line unless --debug."""

    def formatException(self, ei: Any) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(super().format(record).split())


if TYPE_CHECKING:  # newer click makes ParamType generic; click 8.1, which we support, cannot subscript it
    _FloatParam = click.ParamType[float]
    _TimeParam = click.ParamType[datetime]
else:
    _FloatParam = _TimeParam = click.ParamType


class _Seconds(_FloatParam):
    """A finite number of seconds >= 0 (click's FloatRange lets ``nan`` and ``inf`` through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds >= 0", param, ctx)
        return seconds


class _Delay(_FloatParam):
    """Seconds from now, as ``enqueue --delay`` takes them."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        try:
            return dropin.check_delay(seconds)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _When(_TimeParam):
    """An ISO 8601 time, as ``enqueue --at`` takes it (naive means local time)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return dropin.parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _who(command: str) -> str:
    """Who acts, for a task's log: ``user@host (spoolatp COMMAND)``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a container's random uid)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (spoolatp {command})"


# --------------------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--spool",
    "spool_path",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SPOOLATP_SPOOL",
    show_envvar=True,
    help="The spool directory [default: $SPOOLATP_SPOOL, else ~/.local/share/spoolatp/spool].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors and debug log messages.")
@click.version_option(package_name="spoolatp")
@click.pass_context
def cli(ctx: click.Context, spool_path: Path | None, debug: bool) -> None:
    """EOxServer's Asynchronous Task Processing as a file-system spool queue.

    \b
    Example, the ATP guide's flow with a real daemon:
      spoolatp demo
    and by hand:
      spoolatp --spool /srv/spool init
      spoolatp --spool /srv/spool register SequenceSum sequence_sum --timeout 60
      spoolatp --spool /srv/spool daemon --workers 4 &
      spoolatp --spool /srv/spool enqueue SequenceSum Task001 '[1, 2, 3]' --wait
    """
    global _debug
    _debug = _debug or debug
    if not ctx.resilient_parsing:
        _logging(logging.DEBUG if _debug else logging.ERROR)
    ctx.obj = _Options(spool_path or default_spool_path())


# --------------------------------------------------------------------------- spool and types


@cli.command()
@click.option(
    "--max-queue", type=click.IntRange(min=0), metavar="N", help="Most ENQUEUED tasks at once (0 = unlimited)."
)
@click.option("--durable/--no-durable", default=None, help="fsync every file before it is published.")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Sign the spool with the key in PATH, kept outside the spool (only while it holds no task). "
    "Every host then needs a copy, named by SPOOLATP_KEY_FILE.",
)
@click.option(
    "--new-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Write a new random key to PATH (mode 0600, never replaced) and sign the spool with it.",
)
@click.option(
    "--max-input-bytes",
    callback=lambda ctx, param, value: _size(param, value),
    metavar="SIZE",
    help="Largest pickled task input, e.g. 64M [default: 64M].",
)
@click.option(
    "--max-response-bytes",
    callback=lambda ctx, param, value: _size(param, value),
    metavar="SIZE",
    help="Largest response a handler may store [default: 256M].",
)
@json_option
@click.pass_context
def init(
    ctx: click.Context,
    max_queue: int | None,
    durable: bool | None,
    key_file: Path | None,
    new_key: Path | None,
    max_input_bytes: int | None,
    max_response_bytes: int | None,
    as_json: bool,
) -> None:
    """Create a spool, or change the settings of an existing one.

    \b
    Examples:
      spoolatp --spool /srv/spool init --max-queue 1000
      spoolatp --spool /srv/spool init --new-key /etc/spoolatp/spool.key
      spoolatp --spool /srv/spool init --key-file /etc/spoolatp/spool.key --max-input-bytes 16M
    """
    from spoolatp import plugins
    from spoolatp.daemon import trust_warnings
    from spoolatp.format import new_key as make_key

    opts: _Options = ctx.obj
    if key_file is not None and new_key is not None:
        raise click.UsageError("give --key-file or --new-key, not both")
    created = not (opts.path / "spool.json").is_file()
    if new_key is not None:
        inside = os.path.realpath(new_key.parent) + os.sep
        if inside.startswith(os.path.realpath(opts.path) + os.sep):
            raise Failure(Exit.ERROR, f"{new_key} would lie inside the spool at {opts.path}; keep the key outside it")
        make_key(new_key)
        key_file = new_key
    if key_file is None:
        spool = _open(ctx, create=True)
    else:
        spool = Spool(opts.path, on_event=plugins.notify, key_file=key_file)
    signed = spool.enable_signing() if key_file is not None else None  # before types are read with the key
    if (max_queue, durable, max_input_bytes, max_response_bytes) != (None, None, None, None):
        spool.configure(
            max_queue=max_queue,
            durable=durable,
            max_input_bytes=max_input_bytes,
            max_response_bytes=max_response_bytes,
        )
    settings = dict(spool.settings())
    dropin.prepare(spool)
    warnings = trust_warnings(spool)
    if as_json:
        doc: dict[str, Any] = {"spool": str(spool.path), "created": created, "settings": settings}
        if key_file is not None:
            doc["signing"] = {"key_file": str(key_file), "key_id": spool.key_id, "signed_types": signed}
        _json_out(doc)
    else:
        click.echo(f"{'created' if created else 'updated'} spool {spool.path}")
        for key in sorted(settings):
            click.echo(f"  {key}: {json.dumps(settings[key])}")
        if key_file is not None:
            click.echo(
                f"signed with key id {spool.key_id} from {key_file}: copy that file to every host that uses "
                f"the spool (mode 600) and set SPOOLATP_KEY_FILE to it there; never put it in the spool"
            )
            if signed:
                click.echo(f"signed the registered task types as they are: {', '.join(signed)} (check them)")
    for warning in warnings:
        click.echo(f"spoolatp: warning: {warning}", err=True)


def _size(param: click.Parameter, value: str | None) -> int | None:
    """A number of bytes, with an optional binary suffix: ``65536``, ``64K``, ``64M``, ``1G``."""
    if value is None:
        return None
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    if not number.isdigit() or int(number) * factor < 1:
        raise click.BadParameter(f"{value!r} is not a size in bytes such as 65536, 64K, 64M or 1G", param=param)
    return int(number) * factor


def _option_pair(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _type_json(spool: Spool, ttype: Any) -> dict[str, Any]:
    doc: dict[str, Any] = ttype.to_json()
    folder = None
    if ttype.options.get("hot_folder"):
        try:
            folder = str(dropin.hot_folder(spool, ttype.name))
        except ValueError:
            folder = None
    doc["hot_folder"] = folder
    return doc


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("handler")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=3600,
    show_default=True,
    help="Seconds a consumer may hold a task before it is re-enqueued as abandoned.",
)
@click.option(
    "--retention",
    type=float,
    metavar="SECONDS",
    default=-1,
    show_default=True,
    help="Seconds a FINISHED or FAILED task is kept (<= 0: forever).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    metavar="N",
    default=2,
    show_default=True,
    help="Re-enqueues of an abandoned task before it is FAILED.",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    callback=_option_pair,
    metavar="KEY=VALUE",
    help="A handler setting, repeatable; VALUE is JSON if it parses as JSON, else a string.",
)
@click.option("--hot-folder", is_flag=True, help="Make drop/TYPE/ a hot folder: each file put there becomes a task.")
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    metavar="N",
    default=DEFAULT_PRIORITY,
    show_default=True,
    help="Priority of its tasks, 0..9 (higher runs first), unless an enqueue gives one.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    show_default=True,
    help="Times a task whose handler failed is tried again before it is FAILED.",
)
@click.option(
    "--backoff",
    type=_Seconds(),
    metavar="SECONDS",
    default=1.0,
    show_default=True,
    help="Wait before the first retry; doubled for each further one, with jitter.",
)
@click.option(
    "--backoff-max",
    type=_Seconds(),
    metavar="SECONDS",
    default=300.0,
    show_default=True,
    help="Longest wait before a retry.",
)
@json_option
@click.pass_context
def register(
    ctx: click.Context,
    type_id: str,
    handler: str,
    timeout: float,
    retention: float,
    max_restarts: int,
    options: dict[str, Any],
    hot_folder: bool,
    priority: int,
    retries: int,
    backoff: float,
    backoff_max: float,
    as_json: bool,
) -> None:
    """Create or replace task type TYPE, run by the handler plugin HANDLER.

    \b
    Example (the ATP guide's registerTaskType("SequenceSum", ..., 60, 600, 3)):
      spoolatp register SequenceSum sequence_sum --timeout 60 --retention 600 --max-restarts 3
    A hot folder for images:
      spoolatp register Thumbnail thumbnail --option size=256 --hot-folder
    Urgent tasks, each tried 3 more times after 10, 20 and 40 s (with jitter):
      spoolatp register Alert command.run --priority 8 --retries 3 --backoff 10 --backoff-max 60
    """
    if backoff_max < backoff:
        raise click.BadParameter(
            f"{backoff_max:g} is below --backoff {backoff:g}; the longest wait cannot be shorter than the first",
            param_hint="--backoff-max",
        )
    spool = _open(ctx)
    if hot_folder:
        folder = dropin.hot_folder(spool, type_id)  # refuses names that cannot be a folder
        options = {**options, "hot_folder": True}
    ttype = spool.register_type(
        type_id,
        handler,
        timeout,
        retention,
        max_restarts,
        options,
        priority=priority,
        retries=retries,
        backoff=backoff,
        backoff_max=backoff_max,
    )
    if hot_folder:
        dropin.prepare(spool)
        folder.mkdir(mode=0o770, exist_ok=True)
    if not _handler_installed(handler):
        click.echo(
            f"spoolatp: warning: no installed plugin offers handler {handler!r} on this host; "
            "daemons here will leave these tasks to hosts that have it (see `spoolatp handlers`)",
            err=True,
        )
    if as_json:
        _json_out(_type_json(spool, ttype))
        return
    click.echo(f"registered {ttype.name} -> {ttype.handler}")
    if hot_folder:
        click.echo(f"hot folder: {dropin.hot_folder(spool, type_id)}")


def _handler_installed(name: str) -> bool:
    from spoolatp import plugins

    try:
        return plugins.can_run(name)
    except SpoolError:
        return True  # the plugins are broken: `spoolatp handlers` says how; do not guess here


@cli.command("types")
@json_option
@click.pass_context
def types_(ctx: click.Context, as_json: bool) -> None:
    """List the registered task types.

    \b
    Example:
      spoolatp types --json
    """
    spool = _open(ctx)
    ttypes = spool.types()
    if as_json:
        _json_out({"types": [_type_json(spool, t) for t in ttypes]})
        return
    rows = [
        (
            t.name,
            t.handler,
            f"{t.timeout:g}",
            f"{t.timeret:g}" if t.timeret > 0 else "forever",
            str(t.maxrestart),
            str(t.priority),
            f"{t.retries} ({t.backoff:g}..{t.backoff_max:g}s)" if t.retries else "0",
            json.dumps(t.options, sort_keys=True) if t.options else "",
        )
        for t in ttypes
    ]
    _table(
        ("TYPE", "HANDLER", "TIMEOUT", "RETENTION", "MAX-RESTARTS", "PRIORITY", "RETRIES", "OPTIONS"),
        rows,
        empty="no task types registered",
    )


# --------------------------------------------------------------------------- producing and reading tasks


def _read_input(value: str | None, input_file: Path | None) -> Any:
    if value is not None and input_file is not None:
        raise click.UsageError("give INPUT or --input-file, not both")
    if input_file is not None:
        text, where = input_file.read_text(encoding="utf-8"), str(input_file)
    elif value == "-":
        text, where = sys.stdin.read(), "standard input"
    elif value is not None:
        text, where = value, "INPUT"
    else:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{where} is not valid JSON: {exc}", param_hint="INPUT") from None


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@click.argument("value", metavar="[INPUT]", required=False)
@click.option(
    "--input-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the input (JSON) from this file.",
)
@click.option("--message", default="", help="The first line of the task's log.")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the task to end and print its result.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="With --wait: give up after this many seconds."
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="With --wait: write the result here.")
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    metavar="N",
    help="0..9, higher runs first [default: the type's].",
)
@click.option("--delay", type=_Delay(), metavar="SECONDS", help="Do not start it before this many seconds from now.")
@click.option(
    "--at",
    "at_",
    type=_When(),
    metavar="TIME",
    help="Do not start it before this ISO 8601 time (without a zone: local time).",
)
@json_option
@click.pass_context
def enqueue(
    ctx: click.Context,
    type_id: str,
    task_id: str,
    value: str | None,
    input_file: Path | None,
    message: str,
    wait_: bool,
    timeout: float | None,
    output: Path | None,
    priority: int | None,
    delay: float | None,
    at_: datetime | None,
    as_json: bool,
) -> int:
    """Create task ID of type TYPE; its INPUT is JSON (or - for standard input).

    \b
    Examples:
      spoolatp enqueue SequenceSum Task001 '[1, 2, 3, 4, 5]'
      echo '[1, 2, 3]' | spoolatp enqueue SequenceSum Task002 - --wait
      spoolatp enqueue SequenceSum Task003 --input-file numbers.json
      spoolatp enqueue SequenceSum Urgent '[1]' --priority 9
      spoolatp enqueue SequenceSum Later '[2]' --delay 600
      spoolatp enqueue SequenceSum Nightly '[3]' --at 2026-11-30T02:00:00+01:00
    """
    if not wait_ and (timeout is not None or output is not None):
        raise click.UsageError("--timeout and --output go with --wait")
    if delay is not None and at_ is not None:
        raise click.UsageError("give --delay or --at, not both")
    spool = _open(ctx)
    data = _read_input(value, input_file)
    key = spool.enqueue(type_id, task_id, data, message, priority=priority, not_before=at_ if delay is None else delay)
    if not wait_:
        due = _not_before_of(spool, type_id, task_id, key)
        if as_json:
            _json_out(
                {
                    "type": type_id,
                    "id": task_id,
                    "key": key,
                    "state": "ENQUEUED",
                    "code": 1,
                    "priority": key_priority(key),
                    "not_before": due,
                }
            )
        else:
            when = f", not before {_time_shown(spool, due)}" if due is not None else ""
            click.echo(f"{type_id}/{task_id} ENQUEUED{when}")
        return Exit.OK
    info, waited = _wait_for(spool, type_id, task_id, timeout, bar=not as_json)
    doc = {**_wait_json(spool, info, waited), "key": key, "response": None}
    if info.state.terminal:
        with contextlib.suppress(ResponseNotFound):
            doc["response"] = _response_json(spool, type_id, task_id, output if as_json else None)
    if as_json:
        _json_out(doc)
    elif info.state is State.FINISHED and doc["response"] is not None:
        _print_response(spool, type_id, task_id, output)
    else:
        click.echo(info.state.name)
    return _wait_outcome(info, doc, timeout)


def _not_before_of(spool: Spool, type_id: str, task_id: str, key: str) -> float | None:
    """When a task just enqueued under ``key`` becomes due, or None (not delayed, or gone already)."""
    try:
        info = spool.info(type_id, task_id)
    except SpoolError:
        return None
    return info.not_before if info.key == key else None


def _time_shown(spool: Spool, when: float) -> str:
    """A spool-clock time as this host's local time, with how far ahead it is."""
    ahead = when - spool.clock()
    local = datetime.fromtimestamp(round(when - spool.clock() + time.time())).astimezone()  # on this host's clock
    return f"{local.isoformat(timespec='seconds')} ({'in ' + _age(ahead) if ahead > 0 else 'due'})"


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_context
def status(ctx: click.Context, type_id: str, task_id: str, as_json: bool) -> None:
    """Show the state of a task.

    \b
    Example:
      spoolatp status SequenceSum Task001
    """
    spool = _open(ctx)
    info = spool.info(type_id, task_id)
    if as_json:
        _json_out(_info_json(info, spool.clock()))
        return
    now = spool.clock()
    lines = [
        ("task", f"{info.type_id}/{info.task_id}"),
        ("state", f"{info.state.name} ({int(info.state)})"),
        ("server", info.server or "-"),
        ("priority", str(info.priority)),
        ("attempts", f"{info.attempts} (restarts {info.restarts})"),
        ("enqueued", f"{_age(now - info.enqueued)} ago"),
        ("updated", f"{_age(now - info.updated)} ago"),
    ]
    if info.not_before is not None:
        lines.append(("due", _time_shown(spool, info.not_before)))
    if info.cancel_requested is not None:
        lines.append(("cancel", f"requested by {info.cancel_requested}"))
    if info.progress is not None:
        lines.append(("progress", f"{info.progress:.0%} {info.progress_message or ''}".rstrip()))
    for name, text in lines:
        click.echo(f"{name:<9} {text}")


@cli.command("log")
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_context
def log_(ctx: click.Context, type_id: str, task_id: str, as_json: bool) -> None:
    """Show the history of a task, oldest first (the guide's getTaskLog).

    \b
    Example:
      spoolatp log SequenceSum Task001
    """
    spool = _open(ctx)
    records = []
    state = State.ENQUEUED
    for rec in spool.log(type_id, task_id):
        state = rec.state or state
        records.append(
            {
                "time": rec.time,
                "when": rec.when.isoformat(),
                "state": state.name,
                "code": int(state),
                "change": rec.state is not None,
                "message": rec.message,
                "server": rec.server,
                "attempt": rec.attempt,
                "progress": rec.progress,
            }
        )
    if as_json:
        _json_out({"type": type_id, "id": task_id, "log": records})
        return
    for r in records:
        shown = f"[{r['progress']:.0%}] {r['message']}".rstrip() if r["progress"] is not None else r["message"]
        click.echo(f"- {r['when']} Status: {r['state']} \t{shown}")


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the response to this file."
)
@json_option
@click.pass_context
def result(ctx: click.Context, type_id: str, task_id: str, output: Path | None, as_json: bool) -> None:
    """Print the response a task's handler stored (bytes are written raw).

    \b
    Examples:
      spoolatp result SequenceSum Task001
      spoolatp result Thumbnail photo.jpg --output thumb.png
    """
    spool = _open(ctx)
    if as_json:
        _json_out({"type": type_id, "id": task_id, **_response_json(spool, type_id, task_id, output)})
    else:
        _print_response(spool, type_id, task_id, output)


def _response_json(spool: Spool, type_id: str, task_id: str, output: Path | None) -> dict[str, Any]:
    import base64

    body, mime = spool.response(type_id, task_id)
    doc: dict[str, Any] = {"mime_type": mime, "kind": "text" if isinstance(body, str) else "bytes"}
    if output is not None:
        _write_output(output, body)
        doc.update(output=str(output), response=None, encoding=None)
    elif isinstance(body, str):
        doc.update(output=None, response=body, encoding=None)
    else:
        doc.update(output=None, response=base64.b64encode(body).decode("ascii"), encoding="base64")
    return doc


def _print_response(spool: Spool, type_id: str, task_id: str, output: Path | None) -> None:
    body, mime = spool.response(type_id, task_id)
    if output is not None:
        _write_output(output, body)
        click.echo(f"wrote {len(body)} {'characters' if isinstance(body, str) else 'bytes'} of {mime} to {output}")
    elif isinstance(body, str):
        click.echo(body, nl=not body.endswith("\n"))
    elif sys.stdout.isatty():
        raise Failure(
            Exit.ERROR, f"the response is {len(body)} bytes of {mime}; write it with --output FILE or a redirect"
        )
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()


def _write_output(path: Path, body: str | bytes) -> None:
    path.write_bytes(body.encode("utf-8") if isinstance(body, str) else body)


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_context
def delete(ctx: click.Context, type_id: str, task_id: str, as_json: bool) -> None:
    """Delete a task in whatever state it is (a daemon running it loses its claim).

    \b
    Example:
      spoolatp delete SequenceSum Task001
    """
    spool = _open(ctx)
    spool.delete(type_id, task_id)
    if as_json:
        _json_out({"type": type_id, "id": task_id, "deleted": True})
    else:
        click.echo(f"deleted {type_id}/{task_id}")


def _state_option(ctx: click.Context, param: click.Parameter, value: str | None) -> State | None:
    if value is None:
        return None
    try:
        return State.parse(int(value) if value.strip().isdigit() else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("list")
@click.option("--state", callback=_state_option, help="Only tasks in this state (a name or a code).")
@click.option("--type", "type_id", metavar="TYPE", help="Only tasks of this type.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most this many tasks.")
@json_option
@click.pass_context
def list_(ctx: click.Context, state: State | None, type_id: str | None, limit: int | None, as_json: bool) -> None:
    """List tasks, state by state, oldest first.

    \b
    Examples:
      spoolatp list
      spoolatp list --state RUNNING --type SequenceSum --limit 20
    """
    spool = _open(ctx)
    now = spool.clock()
    infos: list[TaskInfo] = []
    truncated = False
    for info in spool.tasks(state, type_id):
        if limit is not None and len(infos) >= limit:
            truncated = True
            break
        infos.append(info)
    if as_json:
        _json_out({"tasks": [_info_json(i, now) for i in infos], "count": len(infos), "truncated": truncated})
        return
    rows: list[tuple[str, ...]] = [
        (i.state.name, i.type_id, i.task_id, str(i.attempts), _age(now - i.enqueued), i.server or "-") for i in infos
    ]
    notes = [_note(i, now) for i in infos]
    header: tuple[str, ...] = ("STATE", "TYPE", "ID", "ATTEMPTS", "AGE", "SERVER")
    if any(notes):  # only when there is something to say: the usual listing stays six columns
        header += ("NOTE",)
        rows = [(*row, note) for row, note in zip(rows, notes, strict=True)]
    _table(header, rows, empty="no tasks")
    if truncated:
        click.echo(f"(first {limit} shown; raise --limit for more)")


def _note(info: TaskInfo, now: float) -> str:
    """What ``list`` adds about a task: a priority other than the default, a due time, a cancel request."""
    parts = []
    if info.priority != DEFAULT_PRIORITY:
        parts.append(f"priority {info.priority}")
    if info.not_before is not None:
        parts.append(f"due in {_age(info.not_before - now)}" if info.not_before > now else "due")
    if info.cancel_requested is not None:
        parts.append(f"cancel requested by {info.cancel_requested}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- cancelling and re-running


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_context
def cancel(ctx: click.Context, type_id: str, task_id: str, as_json: bool) -> None:
    """Cancel a task: an ENQUEUED one ends FAILED at once; a running one is asked to stop.

    The daemon holding a SCHEDULED or RUNNING task ends it FAILED, after its
    handler stops (or is killed for ignoring the request). A FINISHED or
    FAILED task cannot be cancelled (exit 1).

    \b
    Example:
      spoolatp cancel SequenceSum Task001
    """
    spool = _open(ctx)
    state = spool.cancel(type_id, task_id, by=_who("cancel"))
    requested = not state.terminal
    server = None
    if requested:
        with contextlib.suppress(SpoolError):
            server = spool.info(type_id, task_id).server
    if as_json:
        _json_out(
            {
                "type": type_id,
                "id": task_id,
                "state": state.name,
                "code": int(state),
                "requested": requested,
                "server": server,
            }
        )
    elif requested:
        click.echo(f"{type_id}/{task_id} cancel requested; {state.name} on {server or 'a daemon'}")
    else:
        click.echo(f"{type_id}/{task_id} cancelled ({state.name})")


@cli.command()
@click.argument("type_id", metavar="[TYPE", required=False)
@click.argument("task_id", metavar="ID]", required=False)
@click.option("--type", "of_type", metavar="TYPE", help="With --failed: every FAILED task of this type.")
@click.option("--failed", is_flag=True, help="With --type: re-run all its FAILED tasks (the bulk action).")
@json_option
@click.pass_context
def retry(
    ctx: click.Context, type_id: str | None, task_id: str | None, of_type: str | None, failed: bool, as_json: bool
) -> None:
    """Put FAILED tasks back in the queue, keeping their history.

    Give one task as TYPE ID, or every FAILED task of a type with --type TYPE
    --failed. A task that is not FAILED is an error (exit 1). Each task's
    restart and retry budgets start afresh; its log notes who re-ran it.

    \b
    Examples:
      spoolatp retry SequenceSum Task001
      spoolatp retry --type SequenceSum --failed
    """
    if of_type is not None or failed:
        if type_id is not None:
            raise click.UsageError("give TYPE ID, or --type TYPE --failed, not both")
        if of_type is None:
            raise click.UsageError("--failed goes with --type TYPE (re-run every FAILED task of TYPE)")
        if not failed:
            raise click.UsageError(f"add --failed to re-run every FAILED task of type {of_type!r}")
    elif type_id is None or task_id is None:
        raise click.UsageError("give TYPE ID of one task, or --type TYPE --failed")
    spool = _open(ctx)
    by = _who("retry")
    retried: list[tuple[str, str]] = []
    if of_type is None:
        assert type_id is not None and task_id is not None
        spool.rerun(type_id, task_id, by=by)
        retried.append((type_id, task_id))
    else:
        spool.get_type(of_type)  # a typo is an error, not "nothing to re-run"
        for info in list(spool.tasks(State.FAILED, of_type)):
            try:
                spool.rerun(info.type_id, info.task_id, by=by)
            except (TaskNotFound, ValueError):
                continue  # deleted or re-run by someone else meanwhile: nothing left to do
            retried.append((info.type_id, info.task_id))
    if as_json:
        _json_out({"retried": [{"type": t, "id": i} for t, i in retried], "count": len(retried)})
        return
    for t, i in retried:
        click.echo(f"{t}/{i} re-enqueued")
    if of_type is not None and not retried:
        click.echo(f"no FAILED tasks of type {of_type}")


# --------------------------------------------------------------------------- waiting


@cli.command()
@click.argument("type_id", metavar="TYPE")
@click.argument("task_id", metavar="ID")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up after this many seconds (exit code 6)."
)
@json_option
@click.pass_context
def wait(ctx: click.Context, type_id: str, task_id: str, timeout: float | None, as_json: bool) -> int:
    """Wait until a task is FINISHED (exit 0) or FAILED (exit 5).

    On a terminal, a progress bar shows what the handler reports.

    \b
    Example:
      spoolatp wait SequenceSum Task001 --timeout 600 && spoolatp result SequenceSum Task001
    """
    spool = _open(ctx)
    info, waited = _wait_for(spool, type_id, task_id, timeout, bar=not as_json)
    doc = _wait_json(spool, info, waited)
    if as_json:
        _json_out(doc)
    else:
        click.echo(info.state.name)
    return _wait_outcome(info, doc, timeout)


def _wait_for(spool: Spool, type_id: str, task_id: str, timeout: float | None, *, bar: bool) -> tuple[TaskInfo, float]:
    """Poll until the task ends or ``timeout`` passes; return its last info and the time waited."""
    start = time.monotonic()
    delay = 0.02
    info = spool.info(type_id, task_id)
    if not (bar and sys.stdout.isatty()) or info.state.terminal:
        while not info.state.terminal and (timeout is None or time.monotonic() - start < timeout):
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            info = spool.info(type_id, task_id)
        return info, time.monotonic() - start
    shown = 0
    label = f"{type_id}/{task_id}"
    with click.progressbar(length=1000, label=label, show_eta=False, item_show_func=lambda s: s) as progress:
        while True:
            done = 1000 if info.state is State.FINISHED else int(1000 * (info.progress or 0.0))
            note = f"{info.state.name} {info.progress_message or ''}".rstrip()
            progress.update(max(0, done - shown), note)
            shown = max(shown, done)
            if info.state.terminal or (timeout is not None and time.monotonic() - start >= timeout):
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            info = spool.info(type_id, task_id)
    return info, time.monotonic() - start


def _wait_json(spool: Spool, info: TaskInfo, waited: float) -> dict[str, Any]:
    doc = _info_json(info, spool.clock())
    doc["waited"] = round(waited, 3)
    doc["message"] = _last_message(spool, info)
    return doc


def _last_message(spool: Spool, info: TaskInfo) -> str | None:
    try:
        changes = [r for r in spool.log(info.type_id, info.task_id) if r.state is not None]
    except SpoolError:
        return None
    return changes[-1].message if changes else None


def _wait_outcome(info: TaskInfo, doc: dict[str, Any], timeout: float | None) -> int:
    name = f"task {info.type_id!r}/{info.task_id!r}"
    if info.state is State.FINISHED:
        return Exit.OK
    if info.state is State.FAILED:
        reason = (str(doc.get("message") or "").strip() or "no reason given").splitlines()[0]
        raise Failure(Exit.TASK_FAILED, f"{name} FAILED: {reason} (see `spoolatp log`)")
    raise Failure(Exit.TIMEOUT, f"{name} is still {info.state.name} after {timeout:g} s (timeout)")


# --------------------------------------------------------------------------- observing the spool


def _gather_stats(spool: Spool) -> dict[str, Any]:
    now = spool.clock()
    by_type: dict[str, dict[str, int]] = {t.name: {s.name: 0 for s in State} for t in spool.types()}
    ended = {f"{m}m": {"FINISHED": 0, "FAILED": 0} for m in WINDOWS}
    oldest: float | None = None
    for info in spool.tasks():
        by_type.setdefault(info.type_id, {s.name: 0 for s in State})[info.state.name] += 1
        if info.state is State.ENQUEUED:
            oldest = info.enqueued if oldest is None else min(oldest, info.enqueued)
        elif info.state.terminal:
            for m in WINDOWS:
                if now - info.updated <= 60 * m:
                    ended[f"{m}m"][info.state.name] += 1
    counts = {s.name: sum(t[s.name] for t in by_type.values()) for s in State}
    daemons = [{**d, "age": round(now - float(d.get("beat", now)), 3)} for d in spool.daemons()]
    quarantine = [n for n in _names(spool.path / "quarantine") if not n.endswith(".reason")]
    return {
        "spool": str(spool.path),
        "time": now,
        "counts": counts,
        "types": by_type,
        "oldest_enqueued_age": None if oldest is None else round(now - oldest, 3),
        "ended": ended,
        "daemons": daemons,
        "quarantine": len(quarantine),
        "drop": {"pending": len(dropin.pending(spool)), "rejected": len(dropin.rejected(spool))},
    }


def _names(path: Path) -> list[str]:
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except FileNotFoundError:
        return []


@cli.command()
@click.option("--prometheus", is_flag=True, help="Print the Prometheus text exposition format.")
@json_option
@click.pass_context
def stats(ctx: click.Context, prometheus: bool, as_json: bool) -> None:
    """Show counts per state and type, queue age, throughput and daemons.

    \b
    Examples:
      spoolatp stats
      spoolatp stats --prometheus > /var/lib/node_exporter/spoolatp.prom
    """
    if prometheus and as_json:
        raise click.UsageError("give --prometheus or --json, not both")
    spool = _open(ctx)
    data = _gather_stats(spool)
    if as_json:
        _json_out(data)
    elif prometheus:
        click.echo(_prometheus(data), nl=False)
    else:
        _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    click.echo(f"spool {data['spool']}")
    states = [s.name for s in State]
    rows = [(name, *(str(c[s]) for s in states)) for name, c in sorted(data["types"].items())]
    rows.append(("(all)", *(str(data["counts"][s]) for s in states)))
    _table(("TYPE", *states), rows, empty="")
    oldest = data["oldest_enqueued_age"]
    click.echo(f"oldest ENQUEUED task: {'none' if oldest is None else _age(oldest) + ' old'}")
    windows = "/".join(str(m) for m in WINDOWS)
    for state in ("FINISHED", "FAILED"):
        counts = "/".join(str(data["ended"][f"{m}m"][state]) for m in WINDOWS)
        click.echo(f"{state} in the last {windows} min: {counts}")
    if not data["daemons"]:
        click.echo("daemons: none seen")
    for d in data["daemons"]:
        running = d.get("running")
        busy = f", {len(running)} running" if isinstance(running, list) else ""
        click.echo(
            f"daemon {d.get('server')}: {d.get('state', '?')} on {d.get('host', '?')} pid {d.get('pid', '?')}, "
            f"{d.get('workers', '?')} workers{busy}, last heartbeat {_age(float(d['age']))} ago"
        )
    click.echo(f"quarantine: {data['quarantine']} files")
    click.echo(f"drop-ins: {data['drop']['pending']} pending, {data['drop']['rejected']} rejected")


def _prometheus(data: dict[str, Any]) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    metric(
        "spoolatp_tasks",
        "gauge",
        "Tasks in the spool by state and type.",
        [({"state": s, "type": t}, n) for t, c in sorted(data["types"].items()) for s, n in c.items()],
    )
    oldest = data["oldest_enqueued_age"]
    metric(
        "spoolatp_oldest_enqueued_age_seconds",
        "gauge",
        "Age of the oldest ENQUEUED task (0 when none waits).",
        [({}, oldest or 0.0)],
    )
    metric(
        "spoolatp_tasks_ended",
        "gauge",
        "FINISHED and FAILED tasks whose last journal entry is within the window.",
        [({"state": s, "window": w}, n) for w, c in data["ended"].items() for s, n in c.items()],
    )
    metric(
        "spoolatp_daemon_heartbeat_timestamp_seconds",
        "gauge",
        "Time of each daemon's last heartbeat.",
        [
            ({"server": str(d.get("server")), "state": str(d.get("state", ""))}, float(d.get("beat", 0)))
            for d in data["daemons"]
        ],
    )
    metric(
        "spoolatp_daemon_heartbeat_age_seconds",
        "gauge",
        "Seconds since each daemon's last heartbeat.",
        [({"server": str(d.get("server"))}, float(d["age"])) for d in data["daemons"]],
    )
    metric(
        "spoolatp_quarantined_files", "gauge", "Files in quarantine/ (failed validation).", [({}, data["quarantine"])]
    )
    metric("spoolatp_drop_pending", "gauge", "Drop-ins waiting in drop/.", [({}, data["drop"]["pending"])])
    metric("spoolatp_drop_rejected", "gauge", "Drop-ins in drop/rejected/.", [({}, data["drop"]["rejected"])])
    return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@cli.command()
@json_option
@click.pass_context
def sweep(ctx: click.Context, as_json: bool) -> None:
    """One maintenance pass, as a daemon does it (for cron).

    Re-enqueues abandoned tasks, deletes retired ones, cleans up after
    crashed processes in tmp/, and ingests drop-ins.

    \b
    Example (crontab):
      * * * * *  spoolatp --spool /srv/spool sweep
    """
    spool = _open(ctx)
    zombies = spool.reenqueue_zombies()
    retired = spool.delete_retired()
    cleaned = spool.sweep_tmp()
    report = dropin.ingest(spool)
    if as_json:
        _json_out(
            {
                "reenqueued": [{"type": t, "id": i, "state": s.name} for t, i, s in zombies],
                "retired": [{"type": t, "id": i} for t, i in retired],
                "tmp_cleaned": cleaned,
                "dropin": report.to_json(),
            }
        )
        return
    lines = [f"abandoned {t}/{i}: now {s.name}" for t, i, s in zombies]
    lines += [f"retired {t}/{i}" for t, i in retired]
    lines += [f"cleaned tmp/{e}" for e in cleaned]
    lines += [f"drop-in enqueued {t}/{i}" for t, i in report.enqueued]
    lines += [f"drop-in recovered {t}/{i} (enqueued before a crash)" for t, i in report.recovered]
    lines += [f"drop-in rejected {f}: {r}" for f, r in report.rejected]
    lines += [f"drop-in deferred {f} (queue full, or its id still reserved): retried later" for f in report.deferred]
    click.echo("\n".join(lines) if lines else "nothing to do")


@cli.command()
@click.option("--force", is_flag=True, help="Upgrade although daemons' heartbeats are fresh (only if they are dead).")
@json_option
@click.pass_context
def upgrade(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Convert the spool to this version's on-disk format (journal lines inside the task file).

    Run it once, with every daemon on every host stopped, after installing this version on every
    host. Safe to run again after a crash; a spool already converted is left alone.

    \b
    Example:
      spoolatp --spool /srv/spool upgrade
    """
    from spoolatp.upgrade import upgrade as upgrade_spool

    report = upgrade_spool(_open(ctx), force=force)
    if as_json:
        _json_out(report.to_json())
        return
    for daemon_ in report.forced:
        click.echo(f"spoolatp: warning: daemon {daemon_} looked alive; upgraded anyway (--force)", err=True)
    if report.before == report.after:
        click.echo(f"the spool at {report.spool} is in format {report.after} already: nothing to do")
        return
    per_place = ", ".join(f"{place} {n}" for place, n in report.converted.items() if n)
    click.echo(
        f"upgraded the spool at {report.spool} from format {report.before} to {report.after}: converted "
        f"{report.total} task directories{f' ({per_place})' if per_place else ''}; "
        f"{report.unchanged} had no journal and needed nothing"
    )
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}")
    if report.skipped:
        click.echo(
            f"{len(report.skipped)} entries were left as they were: they are damaged, and the daemons quarantine "
            "them when they meet them (see quarantine/ later)"
        )


@cli.command()
@json_option
def handlers(as_json: bool) -> None:
    """List the handler plugins installed on this host.

    \b
    Example:
      spoolatp handlers
    """
    from spoolatp import plugins

    found = plugins.installed_handlers()
    rows = [
        {"name": h.name, "plugin": h.plugin, "distribution": h.distribution, "version": h.version}
        for h in sorted(found.handlers, key=lambda h: h.name)
    ]
    problems = [
        {"plugin": p.plugin, "distribution": p.distribution, "version": p.version, "message": p.message}
        for p in found.problems
    ]
    if as_json:
        _json_out({"handlers": rows, "problems": problems})
        return
    table = [(str(r["name"]), r["plugin"] or "-", r["distribution"] or "-", r["version"] or "-") for r in rows]
    _table(("HANDLER", "PLUGIN", "DISTRIBUTION", "VERSION"), table, empty="no handler plugins installed")
    for p in problems:
        click.echo(f"spoolatp: warning: plugin {p['plugin']} is unusable: {p['message']}", err=True)


# --------------------------------------------------------------------------- running tasks


@cli.command()
@click.option("--workers", type=click.IntRange(min=1), metavar="N", help="Worker processes [default: the CPU count].")
@click.option("--max-tasks-per-worker", type=click.IntRange(min=1), metavar="N", help="Recycle a worker after N tasks.")
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Poll every SECONDS instead of inotify.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish after SIGTERM.",
)
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="Mean seconds between maintenance sweeps.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=5.0,
    show_default=True,
    help="Seconds between heartbeats in daemons/.",
)
@click.option(
    "--dead-after",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=60.0,
    show_default=True,
    help="Heartbeat age after which another daemon is presumed dead.",
)
@click.option(
    "--cancel-grace",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=10.0,
    show_default=True,
    help="Time a handler gets to stop after its task was cancelled, before it is killed.",
)
@click.option("--burst", is_flag=True, help="Drain the queue and exit.")
@click.option("--server-id", metavar="ID", help="This daemon's id [default: <hostname>-<pid>].")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least important messages logged.",
)
@click.pass_context
def daemon(
    ctx: click.Context,
    workers: int | None,
    max_tasks_per_worker: int | None,
    poll: float | None,
    grace: float,
    sweep_interval: float,
    heartbeat: float,
    dead_after: float,
    cancel_grace: float,
    burst: bool,
    server_id: str | None,
    log_level: str,
) -> int:
    """Run tasks of the spool until SIGTERM or Ctrl-C (a second one stops at once).

    \b
    Examples:
      spoolatp --spool /srv/spool daemon --workers 4
      spoolatp daemon --burst --log-level WARNING     # drain the queue, then exit
    """
    from spoolatp.daemon import Daemon

    spool = _open(ctx)
    _logging(logging.DEBUG if _debug else getattr(logging, log_level.upper()), daemon=True)
    runner = Daemon(
        spool,
        server_id=server_id,
        workers=workers,
        max_tasks_per_worker=max_tasks_per_worker,
        poll=poll,
        grace=grace,
        sweep_interval=sweep_interval,
        heartbeat=heartbeat,
        dead_after=dead_after,
        cancel_grace=cancel_grace,
        burst=burst,
    )
    return runner.run()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=8023, show_default=True)
@click.option("--allow-actions", is_flag=True, help="Offer delete and re-enqueue of tasks (needs --token).")
@click.option("--token", envvar="SPOOLATP_WEB_TOKEN", show_envvar=True, help="Secret the actions need.")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, allow_actions: bool, token: str | None) -> None:
    """Serve the web dashboard (needs pip install 'spoolatp[web]').

    Read-only unless started with --allow-actions and a token; give the
    token in the environment to keep it out of `ps`.

    \b
    Example:
      SPOOLATP_WEB_TOKEN=s3cret spoolatp --spool /srv/spool web --port 8023 --allow-actions
    """
    opts: _Options = ctx.find_object(_Options)  # type: ignore[assignment]
    if allow_actions and not token:
        raise click.UsageError("--allow-actions needs --token (or SPOOLATP_WEB_TOKEN)")
    try:
        from spoolatp import web as dashboard
    except ImportError as exc:
        raise Failure(Exit.ERROR, f"the dashboard needs its extra: pip install 'spoolatp[web]' ({exc})") from None
    _logging(logging.INFO, daemon=True)
    dashboard.serve(opts.path, host=host, port=port, allow_actions=allow_actions, token=token)


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=60.0,
    show_default=True,
    help="Give up if the task has not ended after this many seconds.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary spool (its path is printed).")
@json_option
@click.pass_context
def demo(ctx: click.Context, timeout: float, keep: bool, as_json: bool) -> int:
    """Run the ATP guide's SequenceSum example with a real daemon.

    Registers SequenceSum, enqueues Task001 with the input (1, 2, 3, 4, 5),
    polls its status, prints its history and result, and deletes it, as the
    guide's producer does, while a daemon started for the purpose runs it.
    Uses a fresh temporary spool unless --spool is given.

    \b
    Example:
      pip install ./handlers/sequence-sum && spoolatp demo
    """
    _require_handler(DEMO_HANDLER, "spoolatp-sequence-sum", "./handlers/sequence-sum")
    explicit = ctx.get_parameter_source("spool_here") is click.core.ParameterSource.COMMANDLINE or (
        ctx.parent is not None
        and ctx.parent.get_parameter_source("spool_path") is click.core.ParameterSource.COMMANDLINE
    )
    temp = None if explicit else tempfile.mkdtemp(prefix="spoolatp-demo-")
    path = Path(temp) / "spool" if temp else ctx.find_object(_Options).path  # type: ignore[union-attr]
    try:
        return _run_demo(path, timeout, as_json, Path(temp) if temp else None)
    finally:
        if temp and not keep:
            shutil.rmtree(temp, ignore_errors=True)
        elif temp:
            click.echo(f"spool kept at {path}", err=True)


def _require_handler(name: str, distribution: str, source: str) -> None:
    from spoolatp import plugins

    try:
        plugins.load_handler(name)
    except SpoolError as exc:
        raise Failure(
            Exit.ERROR,
            f"the demo needs the handler plugin {name!r}, which is not installed ({type(exc).__name__}: {exc}); "
            f"install it with `pip install {distribution}`, or from a source checkout `pip install {source}`",
        ) from None


def _run_demo(path: Path, timeout: float, as_json: bool, temp: Path | None) -> int:
    from spoolatp import tracker

    tracker.use_spool(path)
    tracker.registerTaskType(DEMO_TYPE, DEMO_HANDLER, 60, 600, 3)
    logfile = (temp or Path(tempfile.mkdtemp(prefix="spoolatp-demo-log-"))) / "daemon.log"
    say: Callable[..., None] = (lambda *a: None) if as_json else print
    command = [sys.executable, "-m", "spoolatp", "--spool", str(path), "daemon", "--workers", "1", "--grace", "5"]
    with open(logfile, "wb") as log_out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                tracker.enqueueTask(DEMO_TYPE, DEMO_ID, (1, 2, 3, 4, 5))
                break
            except tracker.QueueFull:  # retry if queue full
                say("QueueFull!")
                time.sleep(1)
        deadline = time.monotonic() + timeout
        shown, last_print = "", 0.0
        while True:
            status = tracker.getTaskStatusByIdentifier(DEMO_TYPE, DEMO_ID)
            if status[1] != shown or time.monotonic() - last_print >= 5:
                say(time.asctime(), "Status: ", status[1])
                shown, last_print = status[1], time.monotonic()
            if status[1] in ("FINISHED", "FAILED"):
                break
            if proc.poll() is not None:
                raise Failure(Exit.ERROR, f"the demo's daemon exited with code {proc.returncode}: {_tail(logfile)}")
            if time.monotonic() > deadline:
                raise Failure(Exit.TIMEOUT, f"task not done after {timeout:g} s; daemon log: {_tail(logfile)}")
            time.sleep(0.1)
        history = tracker.getTaskLog(DEMO_TYPE, DEMO_ID)
        say("Processing history:")
        for rec in history:
            say(f"- {rec[0]} Status: {rec[1][1]} \t{rec[2]}")
        answer = None
        if status[1] == "FINISHED":
            answer = tracker.getTaskResponse(DEMO_TYPE, DEMO_ID)[0]
            say(f"Result: {answer}")
        tracker.deleteTaskByIdentifier(DEMO_TYPE, DEMO_ID)
        if as_json:
            _json_out(
                {
                    "spool": str(path),
                    "type": DEMO_TYPE,
                    "id": DEMO_ID,
                    "state": status[1],
                    "log": [{"when": r[0].isoformat(), "state": r[1][1], "message": r[2]} for r in history],
                    "result": answer,
                }
            )
        if status[1] == "FAILED":
            raise Failure(Exit.TASK_FAILED, f"task {DEMO_TYPE}/{DEMO_ID} FAILED; see its history above")
        return Exit.OK
    finally:
        _stop(proc)
        if temp is None:
            shutil.rmtree(logfile.parent, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- formatting


def _info_json(info: TaskInfo, now: float) -> dict[str, Any]:
    return {
        "type": info.type_id,
        "id": info.task_id,
        "key": info.key,
        "state": info.state.name,
        "code": int(info.state),
        "server": info.server,
        "attempts": info.attempts,
        "restarts": info.restarts,
        "enqueued": info.enqueued,
        "updated": info.updated,
        "age": round(now - info.enqueued, 3),
        "progress": info.progress,
        "progress_message": info.progress_message,
        "priority": info.priority,
        "not_before": info.not_before,
        "cancel_requested": info.cancel_requested,
    }


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    if not rows:
        if empty:
            click.echo(empty)
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _spool_after_command(command: click.Command) -> None:
    """Let ``--spool DIR`` follow the subcommand too (``spoolatp daemon --spool DIR``)."""
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def wrapped(*args: Any, spool_here: Path | None, **kwargs: Any) -> Any:
        if spool_here is not None:
            opts = click.get_current_context().find_object(_Options)
            assert opts is not None  # the group made it
            opts.path = spool_here
        return callback(*args, **kwargs)

    command.params.append(
        click.Option(
            ["--spool", "spool_here"],
            type=click.Path(file_okay=False, path_type=Path),
            help="The spool directory (the same as giving --spool before the command).",
        )
    )
    command.callback = wrapped


for _command in cli.commands.values():
    _spool_after_command(_command)
