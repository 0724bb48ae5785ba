"""Run a fixed command-line program on a task's files (handler ``command.run``).

The program belongs to the task type, never to the task: it is given by the
options of the type's registration, and a task's input only names files::

    spool.register_type("WordCount", "command.run", options={"argv": ["wc", "-c"], "timeout": 60})
    spool.enqueue("WordCount", "t1", ["/data/a.txt", "/data/b.txt"])    # or {"files": [...]}

runs ``wc -c /data/a.txt /data/b.txt`` and stores what it prints as the
task's response.

Options (fixed at registration):

``argv``
    required: the program and its leading arguments, a list of strings. It is
    run without a shell; the program is looked up on the daemon's ``PATH``.
``timeout``
    seconds the program may run (default: the task type's timeout). On
    timeout the program and everything it started is killed.
``root``
    a directory the input files must lie in (after resolving symbolic links);
    relative file names are taken relative to it. Without it, file names
    must be absolute.
``mime_type``
    mime type of the response when the output is UTF-8 text (default ``text/plain``).

Input: a non-empty list of file names, or ``{"files": [...]}``. Each must be
an existing regular file and must not start with ``-``; files are passed to
the program as absolute, resolved paths, so no name can be read as an option.

The output is stored as the response: text (``mime_type``) if it is UTF-8,
else bytes (``application/octet-stream``). The tail of what the program
writes to stderr goes to the task's log. A non-zero exit, a signal or a
timeout fails the task with the exit code and the stderr tail; the output is
stored all the same.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import stat
import subprocess
from typing import TYPE_CHECKING, Any

from spoolatp import hookimpl

if TYPE_CHECKING:
    from spoolatp.plugins import Register
    from spoolatp.tracker import TaskStatus

OPTIONS = ("argv", "timeout", "root", "mime_type")
#: how much of the program's stderr is logged and quoted in a failure
STDERR_TAIL = 2000


class InvalidTask(ValueError):
    """The task's input or its type's options are unusable; the message says why."""


def run(taskStatus: TaskStatus, input: Any) -> None:
    """Run the task type's program on the task's files; store its output as the response."""
    try:
        ttype = taskStatus.task_type
        argv, timeout, root, mime_type = _options(ttype.name, ttype.options, ttype.timeout)
        files = _files(input, root)
    except InvalidTask as exc:
        taskStatus.setFailure(str(exc))
        return
    program = argv[0]
    taskStatus.log(f"running {program} on {len(files)} file(s)")
    try:
        proc = subprocess.Popen(
            [*argv, *files],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills what it started too
        )
    except OSError as exc:
        taskStatus.setFailure(f"cannot run {program!r} of task type {ttype.name!r} on {socket.gethostname()}: {exc}")
        return
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # the handler itself is being interrupted
            _kill_group(proc)
            proc.wait()
    tail = err[-STDERR_TAIL:].decode("utf-8", "replace").strip()
    if tail:
        taskStatus.log(f"stderr of {program} (last {STDERR_TAIL} bytes at most): {tail}")
    try:
        taskStatus.storeResponse(out.decode("utf-8"), mime_type)
    except UnicodeDecodeError:
        taskStatus.storeResponse(out, "application/octet-stream")
    detail = f": {tail}" if tail else ""
    if timed_out:
        taskStatus.setFailure(f"{program} did not finish within {timeout:g} s and was killed{detail}")
    elif proc.returncode < 0:
        taskStatus.setFailure(f"{program} was killed by signal {_signal_name(-proc.returncode)}{detail}")
    elif proc.returncode != 0:
        taskStatus.setFailure(f"{program} exited with code {proc.returncode}{detail}")
    else:
        taskStatus.setSuccess(f"{program} exited with code 0")


def _options(
    type_name: str, options: dict[str, Any], default_timeout: float
) -> tuple[list[str], float, str | None, str]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidTask(
            f"task type {type_name!r} has unknown option(s) {unknown} for command.run; it takes {', '.join(OPTIONS)}"
        )
    argv = options.get("argv")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\x00" not in a for a in argv)
        or not argv[0]
    ):
        raise InvalidTask(
            f"task type {type_name!r} must be registered with options['argv'], the program and its leading "
            f"arguments as a list of strings (e.g. ['wc', '-c']), not {argv!r}"
        )
    timeout = options.get("timeout", default_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidTask(
            f"options['timeout'] of task type {type_name!r} must be a number of seconds > 0, not {timeout!r}"
        )
    root = options.get("root")
    if root is not None and (not isinstance(root, str) or not os.path.isdir(root)):
        raise InvalidTask(f"options['root'] of task type {type_name!r} must be an existing directory, not {root!r}")
    mime_type = options.get("mime_type", "text/plain")
    if not isinstance(mime_type, str) or not mime_type:
        raise InvalidTask(f"options['mime_type'] of task type {type_name!r} must be a string, not {mime_type!r}")
    return list(argv), float(timeout), os.path.realpath(root) if root else None, mime_type


def _files(input: Any, root: str | None) -> list[str]:
    """Check the task's file names; return them absolute and resolved."""
    if isinstance(input, dict):
        if set(input) != {"files"}:
            raise InvalidTask(
                f"input of command.run may only have the key 'files', not {sorted(map(str, input))}; "
                "the program is fixed by the task type's registration"
            )
        input = input["files"]
    if not isinstance(input, (list, tuple)) or not input:
        raise InvalidTask(f"input of command.run must be a non-empty list of file names, not {input!r:.200}")
    out = []
    for name in input:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidTask(f"input file names must be non-empty strings, not {name!r:.200}")
        if name.startswith("-"):
            raise InvalidTask(f"input file {name!r:.200} starts with '-' and could be taken for an option; refused")
        if not os.path.isabs(name):
            if root is None:
                raise InvalidTask(f"input file {name!r:.200} must be an absolute path (or register options['root'])")
            name = os.path.join(root, name)
        real = os.path.realpath(name)
        if root is not None and os.path.commonpath([root, real]) != root:
            raise InvalidTask(f"input file {name!r:.200} lies outside the task type's root {root}; refused")
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            raise InvalidTask(f"input file {name!r:.200} cannot be used: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise InvalidTask(f"input file {name!r:.200} is not a regular file")
        out.append(real)
    return out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is the program's own: start_new_session
    except ProcessLookupError:
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@hookimpl
def spoolatp_register_handlers(register: Register) -> None:
    register("command.run", run)
