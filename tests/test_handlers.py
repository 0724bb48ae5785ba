"""The example handler packages, loaded through their real, installed entry points.

Needs the packages installed::

    pip install -e ./handlers/sequence-sum -e ./handlers/testing -e ./handlers/command

Handlers run with a real :class:`~spoolatp.tracker.TaskStatus` from a real
claim on a spool in ``tmp_path``; the ones that end the process run in a
subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolatp import HandlerNotFound, Spool, State, plugins, tracker
from spoolatp.format import Claim
from spoolatp.plugins import AUTOLOAD_ENV
from spoolatp.tracker import TaskStatus

INSTALL = "pip install -e ./handlers/sequence-sum -e ./handlers/testing -e ./handlers/command"
DISTRIBUTIONS = {"sequence_sum": "spoolatp-sequence-sum", "testing": "spoolatp-testing", "command": "spoolatp-command"}
HANDLERS = {
    "sequence_sum": "spoolatp-sequence-sum",
    "testing.sleep": "spoolatp-testing",
    "testing.raise": "spoolatp-testing",
    "testing.exit": "spoolatp-testing",
    "testing.hang": "spoolatp-testing",
    "testing.large": "spoolatp-testing",
    "testing.echo": "spoolatp-testing",
    "testing.marker": "spoolatp-testing",
    "command.run": "spoolatp-command",
}


@pytest.fixture(autouse=True)
def installed_packages(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail with the install command if the example packages are missing; autoload on, fresh manager."""
    missing = []
    for dist in DISTRIBUTIONS.values():
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        pytest.fail(f"handler packages {missing} are not installed; from the repository root run: {INSTALL}", False)
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


@dataclasses.dataclass
class Run:
    spool: Spool
    claim: Claim
    type_id: str
    task_id: str

    @property
    def state(self) -> State:
        return self.spool.status(self.type_id, self.task_id)

    @property
    def response(self) -> tuple[Any, str]:
        return self.spool.response(self.type_id, self.task_id)

    @property
    def messages(self) -> list[str]:
        return [r.message for r in self.spool.log(self.type_id, self.task_id)]


def run_handler(
    tmp_path: Path,
    handler: str,
    input: Any,
    options: dict[str, Any] | None = None,
    type_id: str = "T",
    task_id: str = "t1",
) -> Run:
    """Enqueue, claim and start one task, run its handler as the guide's consumer does, return the outcome.

    An exception from the handler is re-raised after the task is failed with it.
    """
    spool = Spool(tmp_path / "spool", on_event=plugins.notify)
    spool.register_type(type_id, handler, timeout=60, options=options)
    spool.enqueue(type_id, task_id, input)
    [claim] = spool.claim("test-server")
    started = spool.start(claim)
    status = TaskStatus(claim)
    try:
        plugins.load_handler(started.handler)(status, started.input)
    except Exception as exc:
        status.setFailure(str(exc))
        raise
    spool.finish_if_not_done(claim)
    return Run(spool, claim, type_id, task_id)


# --------------------------------------------------------------------------- installation


def test_entry_points_of_the_example_packages_resolve() -> None:
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="spoolatp")}
    for name, dist in DISTRIBUTIONS.items():
        assert name in found, f"entry point {name!r} missing; run: {INSTALL}"
        ep = found[name]
        assert ep.dist is not None and ep.dist.name == dist
        assert callable(getattr(ep.load(), "spoolatp_register_handlers", None))


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_load_handler_finds_each_installed_handler_with_its_distribution(name: str) -> None:
    handler = plugins.load_handler(name)
    assert callable(handler)
    assert plugins.can_run(name)
    [info] = [h for h in plugins.installed_handlers().handlers if h.name == name]
    assert info.handler is handler
    assert info.distribution == HANDLERS[name]
    assert info.version == importlib.metadata.version(HANDLERS[name])
    assert info.entry_point is not None and info.entry_point.startswith(f"{info.plugin} = ")


def test_installed_plugins_load_without_problems() -> None:
    handlers, problems = plugins.installed_handlers()
    assert problems == []
    assert set(HANDLERS) <= {h.name for h in handlers}


def test_handler_not_found_lists_the_installed_handlers() -> None:
    with pytest.raises(HandlerNotFound) as caught:
        plugins.load_handler("sequence-sum")
    message = str(caught.value)
    assert "'sequence-sum'" in message and "did you mean 'sequence_sum'?" in message
    for name in HANDLERS:
        assert name in message


def test_autoload_disabled_hides_installed_packages_until_registered_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    plugins.reset()
    with pytest.raises(HandlerNotFound, match=AUTOLOAD_ENV):
        plugins.load_handler("sequence_sum")
    module = importlib.import_module("spoolatp_sequence_sum")
    plugins.register_plugin(module)
    assert plugins.load_handler("sequence_sum") is module.handler
    assert not plugins.can_run("testing.echo")


def test_a_broken_distribution_does_not_stop_the_installed_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    info = site / "spoolatp_broken_example-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spoolatp-broken-example\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[spoolatp]\nbroken = spoolatp_broken_example_no_such_module:plugin\n")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    for name in HANDLERS:
        assert plugins.can_run(name)
    [problem] = plugins.installed_handlers().problems
    assert problem.plugin == "broken" and problem.distribution == "spoolatp-broken-example"
    assert "entry point 'broken = spoolatp_broken_example_no_such_module:plugin'" in problem.message


# --------------------------------------------------------------------------- the guide's SequenceSum


def test_guide_consumer_loop_runs_sequence_sum_from_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spoolatp.tracker import (
        deleteTaskByIdentifier,
        dequeueTask,
        enqueueTask,
        getTaskLog,
        getTaskResponse,
        getTaskStatusByIdentifier,
        registerTaskType,
        startTask,
        stopTaskSuccessIfNotFinished,
    )

    monkeypatch.setattr(tracker, "_selected", tracker._selected)  # restored after the test
    tracker.use_spool(tmp_path / "spool")
    # producer, Steps 2 and 3
    registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)
    enqueueTask("SequenceSum", "Task001", (1, 2, 3, 4, 5))
    # consumer, as in the guide but for the handler lookup
    [taskId] = dequeueTask("SERVER_ID")
    pStatus = TaskStatus(taskId)
    try:
        requestType, requestID, requestHandler, inputs = startTask(taskId)
        handler = plugins.load_handler(requestHandler)
        handler(pStatus, inputs)
        stopTaskSuccessIfNotFinished(taskId)
    except Exception as e:
        pStatus.setFailure(str(e))
    assert (requestType, requestID, requestHandler) == ("SequenceSum", "Task001", "sequence_sum")
    # producer, Steps 4 to 7
    assert getTaskStatusByIdentifier("SequenceSum", "Task001") == (5, "FINISHED")
    assert getTaskResponse("SequenceSum", "Task001") == ("15.0", "text/xml")
    assert [rec[1][1] for rec in getTaskLog("SequenceSum", "Task001")] == [
        "ENQUEUED",
        "SCHEDULED",
        "RUNNING",
        "FINISHED",
    ]
    deleteTaskByIdentifier("SequenceSum", "Task001")


def test_sequence_sum_fails_on_each_non_number_but_keeps_summing(tmp_path: Path) -> None:
    run = run_handler(tmp_path, "sequence_sum", (1, "two", 3.5, None, "4"))
    assert run.state is State.FAILED
    assert run.response == ("8.5", "text/xml")
    assert sum("Input must be a sequence of numbers!" in m for m in run.messages) == 2


def test_sequence_sum_of_nothing_is_zero(tmp_path: Path) -> None:
    run = run_handler(tmp_path, "sequence_sum", ())
    assert (run.state, run.response) == (State.FINISHED, ("0", "text/xml"))


# --------------------------------------------------------------------------- testing.*


def test_testing_sleep_sleeps_in_steps_reporting_progress(tmp_path: Path) -> None:
    began = time.monotonic()
    run = run_handler(tmp_path, "testing.sleep", {"seconds": 0.4, "steps": 4})
    assert time.monotonic() - began >= 0.4
    assert run.state is State.FINISHED
    records = run.spool.log("T", "t1")
    assert [r.progress for r in records if r.progress is not None] == [0.25, 0.5, 0.75, 1.0]
    assert "step 4 of 4" in [r.message for r in records]
    assert "sleeping 0.4 s in 4 step(s)" in run.messages and "slept 0.4 s" in run.messages
    assert run.spool.info("T", "t1").progress == 1.0


def test_testing_sleep_takes_plain_seconds_and_refuses_nonsense(tmp_path: Path) -> None:
    assert run_handler(tmp_path, "testing.sleep", 0.05).state is State.FINISHED
    with pytest.raises(ValueError, match="seconds"):
        run_handler(tmp_path, "testing.sleep", -1, task_id="t2")


def test_testing_raise_raises_with_the_input_as_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as caught:
        run_handler(tmp_path, "testing.raise", "boom from the handler")
    assert str(caught.value) == "boom from the handler"
    spool = Spool(tmp_path / "spool")
    assert spool.status("T", "t1") is State.FAILED


CONSUME = """
import sys
from spoolatp import plugins
from spoolatp.tracker import TaskStatus, dequeueTask, startTask, use_spool

use_spool(sys.argv[1])
[claim] = dequeueTask("subprocess")
_, _, name, inputs = startTask(claim)
print("running", flush=True)
plugins.load_handler(name)(TaskStatus(claim), inputs)
print("handler returned", flush=True)
"""


@pytest.mark.parametrize(("input", "code"), [(7, 7), (None, 3)])
def test_testing_exit_ends_the_process_with_the_input_as_exit_code(tmp_path: Path, input: Any, code: int) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Exit", "testing.exit")
    spool.enqueue("Exit", "e1", input)
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", CONSUME, str(spool.path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "running\n"
    assert spool.status("Exit", "e1") is State.RUNNING  # it died before anyone could record anything


def test_testing_hang_never_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.register_type("Hang", "testing.hang")
    spool.enqueue("Hang", "h1", None)
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUME, str(spool.path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"
        time.sleep(1.0)
        assert proc.poll() is None
        assert spool.status("Hang", "h1") is State.RUNNING
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        rest = proc.stdout.read()
        proc.stdout.close()
    assert "handler returned" not in rest


def test_testing_large_stores_a_response_of_the_size_asked(tmp_path: Path) -> None:
    run = run_handler(tmp_path, "testing.large", 1000)
    body, mime = run.response
    assert mime == "application/octet-stream"
    assert body == (bytes(range(256)) * 4)[:1000]


def test_testing_large_defaults_to_ten_mebibytes(tmp_path: Path) -> None:
    body, _ = run_handler(tmp_path, "testing.large", None).response
    assert len(body) == 10 * 1024 * 1024


def test_testing_echo_stores_json_when_it_can_and_repr_otherwise(tmp_path: Path) -> None:
    run = run_handler(tmp_path, "testing.echo", {"a": [1, 2.5, None], "b": "x"})
    body, mime = run.response
    assert mime == "application/json" and json.loads(body) == {"a": [1, 2.5, None], "b": "x"}
    run = run_handler(tmp_path, "testing.echo", {1, 2}, task_id="t2")
    assert run.spool.response("T", "t2") == ("{1, 2}", "text/plain")
    run = run_handler(tmp_path, "testing.echo", float("nan"), task_id="t3")
    assert run.spool.response("T", "t3") == ("nan", "text/plain")


def test_testing_marker_appends_type_id_and_pid_once_per_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    began = time.monotonic()
    run_handler(tmp_path, "testing.marker", {"path": str(marker), "sleep": 0.2}, type_id="Mark", task_id="a")
    assert time.monotonic() - began >= 0.2
    run_handler(tmp_path, "testing.marker", str(marker), type_id="Mark", task_id="b")
    assert marker.read_text() == f"Mark/a {os.getpid()}\nMark/b {os.getpid()}\n"


# --------------------------------------------------------------------------- command.run


WC = {"argv": ["wc", "-c"], "timeout": 60}


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"hello")
    (data / "b.txt").write_bytes(b"goodbye")
    return [(data / "a.txt").resolve(), (data / "b.txt").resolve()]


def wc_counts(text: str) -> dict[str, int]:
    return {name: int(count) for count, name in (line.split(None, 1) for line in text.splitlines())}


def test_command_runs_the_registered_program_on_the_input_files(tmp_path: Path, files: list[Path]) -> None:
    run = run_handler(tmp_path, "command.run", [str(f) for f in files], options=WC)
    assert run.state is State.FINISHED
    body, mime = run.response
    assert mime == "text/plain"
    assert wc_counts(body) == {str(files[0]): 5, str(files[1]): 7, "total": 12}
    assert "wc exited with code 0" in run.messages


def test_command_takes_files_in_a_dict(tmp_path: Path, files: list[Path]) -> None:
    run = run_handler(tmp_path, "command.run", {"files": [str(files[0])]}, options=WC)
    assert wc_counts(run.response[0]) == {str(files[0]): 5}


@pytest.mark.parametrize(
    ("input", "complaint"),
    [
        ({"files": ["FILE"], "argv": ["echo", "pwned"]}, "may only have the key 'files'"),
        (["--version"], "starts with '-'"),
        (["-c", "FILE"], "starts with '-'"),
        ("FILE", "must be a non-empty list"),
        ([], "must be a non-empty list"),
        (["relative.txt"], "must be an absolute path"),
        (["/no/such/file"], "No such file"),
        (["DIR"], "not a regular file"),
    ],
)
def test_task_input_cannot_change_the_program_or_smuggle_options(
    tmp_path: Path, files: list[Path], input: Any, complaint: str
) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("FILE", str(files[0])).replace("DIR", str(files[0].parent))
        if isinstance(value, list):
            return [fill(v) for v in value]
        return {k: fill(v) for k, v in value.items()}

    run = run_handler(tmp_path, "command.run", fill(input), options=WC)
    assert run.state is State.FAILED
    assert complaint in run.messages[-1]
    assert not any("pwned" in m for m in run.messages)


def test_a_file_named_like_an_option_is_passed_as_a_path(tmp_path: Path, files: list[Path]) -> None:
    tricky = files[0].parent / "--version"
    tricky.write_bytes(b"123")
    run = run_handler(tmp_path, "command.run", [str(tricky)], options=WC)
    assert run.state is State.FINISHED
    assert wc_counts(run.response[0]) == {str(tricky): 3}  # counted, not wc's version text


def test_root_option_resolves_relative_names_and_refuses_escapes(tmp_path: Path, files: list[Path]) -> None:
    options = {**WC, "root": str(files[0].parent)}
    run = run_handler(tmp_path, "command.run", ["a.txt"], options=options)
    assert wc_counts(run.response[0]) == {str(files[0]): 5}
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (files[0].parent / "link.txt").symlink_to(outside)
    for n, name in enumerate(["../secret.txt", "link.txt", str(outside)]):
        run = run_handler(tmp_path, "command.run", [name], options=options, task_id=f"escape{n}")
        assert run.state is State.FAILED and "outside the task type's root" in run.messages[-1]


def test_non_zero_exit_fails_with_code_and_stderr_tail_and_keeps_the_output(tmp_path: Path, files: list[Path]) -> None:
    options = {"argv": ["sh", "-c", 'echo partial; echo "cannot read $1" >&2; exit 4', "sh"]}
    run = run_handler(tmp_path, "command.run", [str(files[0])], options=options)
    assert run.state is State.FAILED
    assert run.messages[-1] == f"sh exited with code 4: cannot read {files[0]}"
    assert any(m.startswith("stderr of sh") and f"cannot read {files[0]}" in m for m in run.messages)
    assert run.response == ("partial\n", "text/plain")


def test_output_that_is_not_utf8_is_stored_as_bytes(tmp_path: Path, files: list[Path]) -> None:
    binary = files[0].parent / "bin.dat"
    binary.write_bytes(b"\xff\xfe\x00\x80")
    run = run_handler(tmp_path, "command.run", [str(binary)], options={"argv": ["cat"]})
    assert run.response == (b"\xff\xfe\x00\x80", "application/octet-stream")


def test_timeout_kills_the_program_and_what_it_started(tmp_path: Path, files: list[Path]) -> None:
    options = {"argv": ["sh", "-c", "sleep 30; echo never", "sh"], "timeout": 0.5}
    began = time.monotonic()
    run = run_handler(tmp_path, "command.run", [str(files[0])], options=options)
    assert time.monotonic() - began < 10  # the grandchild `sleep` did not keep the pipes open
    assert run.state is State.FAILED
    assert run.messages[-1] == "sh did not finish within 0.5 s and was killed"


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({}, "must be registered with options['argv']"),
        ({"argv": "wc -c"}, "must be registered with options['argv']"),
        ({"argv": []}, "must be registered with options['argv']"),
        ({"argv": ["wc"], "timout": 5}, "unknown option(s) ['timout']"),
        ({"argv": ["wc"], "timeout": 0}, "options['timeout']"),
        ({"argv": ["spoolatp-no-such-program"]}, "cannot run 'spoolatp-no-such-program'"),
    ],
)
def test_bad_registration_options_fail_the_task_clearly(
    tmp_path: Path, files: list[Path], options: dict[str, Any], complaint: str
) -> None:
    run = run_handler(tmp_path, "command.run", [str(files[0])], options=options)
    assert run.state is State.FAILED
    assert complaint in run.messages[-1]
    assert "'T'" in run.messages[-1]


def test_file_names_reach_the_program_unparsed_by_any_shell(tmp_path: Path, files: list[Path]) -> None:
    evil = files[0].parent / "x; touch pwned $(touch pwned2) `touch pwned3`"
    evil.write_bytes(b"1234")
    run = run_handler(tmp_path, "command.run", [str(evil)], options=WC)
    assert wc_counts(run.response[0]) == {str(evil): 4}
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
