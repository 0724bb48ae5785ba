"""The plugin layer: hook validation, handler lookup, problems isolated per plugin, lifecycle hooks.

Managers here are fresh and plugins are registered inline, with entry-point
autoloading off, except where a throwaway distribution in ``tmp_path`` is
discovered through the real ``importlib.metadata``.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spoolatp
from spoolatp import HandlerNotFound, PluginError, Spool, State, hookimpl, plugins
from spoolatp.plugins import AUTOLOAD_ENV, Register
from spoolatp.tracker import TaskStatus


@pytest.fixture(autouse=True)
def no_autoload(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with a fresh process-wide manager that loads no entry points."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    plugins.reset()
    yield
    plugins.reset()


def add(taskStatus: TaskStatus, input: Any) -> None:
    taskStatus.storeResponse(str(sum(input)))


def other(taskStatus: TaskStatus, input: Any) -> None:
    pass


class AddPlugin:
    @hookimpl
    def spoolatp_register_handlers(self, register: Register) -> None:
        register("demo.add", add)
        register("same", add)


class OtherPlugin:
    @hookimpl
    def spoolatp_register_handlers(self, register: Register) -> None:
        register("demo.other", other)
        register("same", other)


class Recorder:
    """Records every lifecycle hook call, with the arguments it received."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def spoolatp_task_enqueued(self, type_id: str, task_id: str, key: str) -> None:
        self.calls.append(("enqueued", {"type_id": type_id, "task_id": task_id, "key": key}))

    @hookimpl
    def spoolatp_task_started(self, type_id: str, task_id: str, key: str, attempt: int) -> None:
        self.calls.append(("started", {"type_id": type_id, "task_id": task_id, "key": key, "attempt": attempt}))

    @hookimpl
    def spoolatp_task_finished(self, type_id: str, task_id: str, key: str, message: str) -> None:
        self.calls.append(("finished", {"type_id": type_id, "task_id": task_id, "key": key, "message": message}))

    @hookimpl
    def spoolatp_task_failed(self, type_id: str, task_id: str, message: str) -> None:  # a subset of the arguments
        self.calls.append(("failed", {"type_id": type_id, "task_id": task_id, "message": message}))

    @hookimpl
    def spoolatp_task_reenqueued(self, task_id: str, message: str) -> None:
        self.calls.append(("reenqueued", {"task_id": task_id, "message": message}))

    @hookimpl
    def spoolatp_task_retired(self, type_id: str, task_id: str, key: str) -> None:
        self.calls.append(("retired", {"type_id": type_id, "task_id": task_id, "key": key}))


# --------------------------------------------------------------------------- the manager


def test_make_plugin_manager_builds_a_new_manager_each_time_with_the_builtin_plugin() -> None:
    first, second = plugins.make_plugin_manager(), plugins.make_plugin_manager()
    assert first is not second
    assert first.get_plugin(plugins.BUILTIN_PLUGIN) is not None
    assert first.can_run("spoolatp.dummy")
    [info] = first.installed_handlers().handlers
    assert (info.name, info.plugin, info.distribution) == ("spoolatp.dummy", "spoolatp.builtin", "spoolatp")
    assert not first.autoloaded  # SPOOLATP_DISABLE_PLUGIN_AUTOLOAD is set by the fixture


def test_process_wide_manager_is_built_once_and_reset_forgets_it() -> None:
    pm = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is pm
    plugins.notify("enqueued", {"type_id": "T", "task_id": "t", "key": "k"})
    assert plugins.get_plugin_manager() is pm
    plugins.reset()
    assert plugins.get_plugin_manager() is not pm


def test_hookimpl_is_exported_by_the_package() -> None:
    assert spoolatp.hookimpl is plugins.hookimpl
    assert "hookimpl" in spoolatp.__all__


def test_registered_plugin_offers_its_handlers_by_name() -> None:
    assert plugins.register_plugin(AddPlugin(), name="add-plugin") == "add-plugin"
    assert plugins.load_handler("demo.add") is add
    assert plugins.can_run("demo.add")
    assert not plugins.can_run("demo.nothing")
    handlers, problems = plugins.installed_handlers()
    assert problems == []
    assert [(h.name, h.plugin, h.distribution) for h in handlers] == [
        ("demo.add", "add-plugin", None),
        ("same", "add-plugin", None),
        ("spoolatp.dummy", "spoolatp.builtin", "spoolatp"),
    ]


def test_plugins_registered_after_a_lookup_are_seen_by_the_next_lookup() -> None:
    assert not plugins.can_run("demo.add")
    plugins.register_plugin(AddPlugin())
    assert plugins.can_run("demo.add")
    plugins.get_plugin_manager().unregister(name=f"{__name__}.AddPlugin")
    assert not plugins.can_run("demo.add")


def test_unknown_handler_raises_handler_not_found_naming_handler_host_and_installed_handlers() -> None:
    plugins.register_plugin(AddPlugin())
    with pytest.raises(HandlerNotFound) as caught:
        plugins.load_handler("demo.ad")
    message = str(caught.value)
    assert "'demo.ad'" in message
    assert socket.gethostname() in message
    assert "installed handlers: demo.add, same, spoolatp.dummy" in message
    assert "did you mean 'demo.add'?" in message
    assert AUTOLOAD_ENV in message
    assert isinstance(caught.value, LookupError)


def test_two_plugins_offering_one_name_make_it_a_plugin_error_naming_both() -> None:
    plugins.register_plugin(AddPlugin())
    plugins.register_plugin(OtherPlugin())
    with pytest.raises(PluginError) as caught:
        plugins.load_handler("same")
    message = str(caught.value)
    assert "'same'" in message
    assert f"'{__name__}.AddPlugin'" in message and f"'{__name__}.OtherPlugin'" in message
    assert not plugins.can_run("same")
    # the other handlers of both plugins are unaffected
    assert plugins.load_handler("demo.add") is add
    assert plugins.load_handler("demo.other") is other
    [problem] = plugins.installed_handlers().problems
    assert "AddPlugin" in problem.plugin and "OtherPlugin" in problem.plugin
    assert problem.message == message


def test_misspelt_hook_is_refused_by_check_pending_naming_plugin_and_hook() -> None:
    class Misspelt:
        @hookimpl
        def spoolatp_register_handler(self, register: Register) -> None:
            register("never", add)

    with pytest.raises(PluginError) as caught:
        plugins.register_plugin(Misspelt(), name="misspelt")
    message = str(caught.value)
    assert "plugin 'misspelt'" in message
    assert "unknown hook 'spoolatp_register_handler'" in message
    assert "did you mean 'spoolatp_register_handlers'?" in message
    pm = plugins.get_plugin_manager()
    assert not pm.has_plugin("misspelt")
    pm.check_pending()  # nothing of it is left behind
    assert not plugins.can_run("never")


def test_optional_unknown_hook_is_allowed() -> None:
    class Forward:
        @hookimpl(optionalhook=True)
        def spoolatp_some_future_hook(self) -> None:
            pass

    assert plugins.register_plugin(Forward(), name="forward") == "forward"


def test_hookimpl_with_a_wrong_signature_is_refused_and_leaves_nothing_registered() -> None:
    recorder = Recorder()

    class WrongSignature:
        @hookimpl
        def spoolatp_task_enqueued(self, type_id: str, task_id: str, key: str) -> None:
            recorder.calls.append(("enqueued", {}))

        @hookimpl
        def spoolatp_task_finished(self, type_id: str, task_id: str, key: str, message: str, result: Any) -> None:
            pass

    with pytest.raises(PluginError) as caught:
        plugins.register_plugin(WrongSignature(), name="wrong")
    message = str(caught.value)
    assert "plugin 'wrong'" in message
    assert "spoolatp_task_finished" in message and "result" in message
    assert not plugins.get_plugin_manager().has_plugin("wrong")
    plugins.notify("enqueued", {"type_id": "T", "task_id": "t", "key": "k"})
    assert recorder.calls == []  # its valid hook was not left behind either


def test_wrapper_implementations_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def spoolatp_task_finished(self) -> Iterator[None]:
            yield

    with pytest.raises(PluginError, match="wrapper"):
        plugins.register_plugin(Wrapper(), name="wrapper")


def test_registering_a_taken_name_or_the_same_plugin_twice_is_a_plugin_error() -> None:
    plugin = AddPlugin()
    plugins.register_plugin(plugin, name="p")
    with pytest.raises(PluginError, match="the name 'p' is taken"):
        plugins.register_plugin(OtherPlugin(), name="p")
    with pytest.raises(PluginError, match="already registered as plugin 'p'"):
        plugins.register_plugin(plugin, name="q")


def test_instances_of_one_class_get_distinct_names() -> None:
    first = plugins.register_plugin(Recorder())
    second = plugins.register_plugin(Recorder())
    assert (first, second) == (f"{__name__}.Recorder", f"{__name__}.Recorder#2")


def test_plugin_whose_register_hook_raises_loses_only_its_own_handlers() -> None:
    class Raising:
        @hookimpl
        def spoolatp_register_handlers(self, register: Register) -> None:
            register("raising.first", add)
            raise RuntimeError("cannot find my configuration")

    plugins.register_plugin(Raising(), name="raising")
    plugins.register_plugin(AddPlugin())
    assert plugins.load_handler("demo.add") is add
    assert not plugins.can_run("raising.first")
    [problem] = plugins.installed_handlers().problems
    assert problem.plugin == "raising"
    assert "RuntimeError: cannot find my configuration" in problem.message
    with pytest.raises(HandlerNotFound, match="cannot find my configuration"):
        plugins.load_handler("raising.first")


@pytest.mark.parametrize(
    ("name", "handler", "complaint"),
    [
        ("has space", add, "invalid name"),
        ("", add, "invalid name"),
        ("../x", add, "invalid name"),
        (42, add, "invalid name"),
        ("ok.name", "not callable", "not callable"),
    ],
)
def test_bad_registrations_are_reported_against_their_plugin(name: Any, handler: Any, complaint: str) -> None:
    class Bad:
        @hookimpl
        def spoolatp_register_handlers(self, register: Register) -> None:
            register(name, handler)

    plugins.register_plugin(Bad(), name="bad")
    handlers, problems = plugins.installed_handlers()
    assert [h.name for h in handlers] == ["spoolatp.dummy"]
    [problem] = problems
    assert problem.plugin == "bad" and complaint in problem.message and "plugin 'bad'" in problem.message


def test_a_handler_registered_twice_by_one_plugin_is_a_problem() -> None:
    class Twice:
        @hookimpl
        def spoolatp_register_handlers(self, register: Register) -> None:
            register("twice", add)
            register("twice", other)

    plugins.register_plugin(Twice(), name="twice")
    [problem] = plugins.installed_handlers().problems
    assert "registers handler 'twice' twice" in problem.message


def test_autoload_env_var_values() -> None:
    with pytest.MonkeyPatch.context() as mp:
        for value, disabled in [("1", True), ("yes", True), ("0", False), ("", False)]:
            mp.setenv(AUTOLOAD_ENV, value)
            assert plugins.autoload_disabled() is disabled
        mp.delenv(AUTOLOAD_ENV)
        assert plugins.autoload_disabled() is False


# --------------------------------------------------------------------------- lifecycle hooks


def test_lifecycle_hooks_fire_through_a_real_spool(tmp_path: Path) -> None:
    recorder = Recorder()
    plugins.register_plugin(recorder)
    spool = Spool(tmp_path / "spool", on_event=plugins.notify)
    spool.register_type("T", "demo.add", timeout=60, timeret=10, maxrestart=1)

    k1 = spool.enqueue("T", "done", [1])
    [c1] = spool.claim("srv")
    spool.start(c1)
    spool.finish(c1, "all good")
    k2 = spool.enqueue("T", "bad", [1])
    [c2] = spool.claim("srv")
    spool.start(c2)
    spool.fail(c2, "it broke")
    spool.enqueue("T", "lost", [1])
    [c3] = spool.claim("srv")
    assert spool.abandon(c3, "worker died") is State.ENQUEUED
    [c4] = spool.claim("srv")
    spool.start(c4)
    assert spool.abandon(c4, "worker died again") is State.FAILED

    class Later(Spool):
        def clock(self) -> float:
            return time.time() + 60  # past the retention of 10 s

    retired = Later(tmp_path / "spool", on_event=plugins.notify).delete_retired()
    assert sorted(retired) == [("T", "bad"), ("T", "done"), ("T", "lost")]

    events = [(name, args.get("task_id")) for name, args in recorder.calls]
    assert events[:9] == [
        ("enqueued", "done"),
        ("started", "done"),
        ("finished", "done"),
        ("enqueued", "bad"),
        ("started", "bad"),
        ("failed", "bad"),
        ("enqueued", "lost"),
        ("reenqueued", "lost"),
        ("started", "lost"),
    ]
    assert events[9] == ("failed", "lost")
    assert sorted(events[10:]) == [("retired", "bad"), ("retired", "done"), ("retired", "lost")]
    calls = recorder.calls
    assert calls[0][1] == {"type_id": "T", "task_id": "done", "key": k1}
    assert calls[1][1]["attempt"] == 1 and calls[8][1]["attempt"] == 2
    assert calls[2][1] == {"type_id": "T", "task_id": "done", "key": k1, "message": "all good"}
    assert calls[5][1] == {"type_id": "T", "task_id": "bad", "message": "it broke"}
    assert "worker died" in calls[7][1]["message"] and "restart 1 of 1" in calls[7][1]["message"]
    assert "restart limit of 1 used up" in calls[9][1]["message"]
    assert {"type_id": "T", "task_id": "bad", "key": k2} in [args for name, args in calls if name == "retired"]


def test_a_raising_lifecycle_hook_is_logged_and_neither_breaks_the_task_nor_silences_other_plugins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom:
        @hookimpl
        def spoolatp_task_started(self) -> None:
            raise RuntimeError("metrics server down")

        @hookimpl
        def spoolatp_task_finished(self) -> None:
            raise RuntimeError("metrics server still down")

    recorder = Recorder()
    plugins.register_plugin(recorder)
    plugins.register_plugin(Boom(), name="boom")  # registered last, so called first
    plugins.register_plugin(AddPlugin())
    spool = Spool(tmp_path / "spool", on_event=plugins.notify)
    spool.register_type("T", "demo.add")
    spool.enqueue("T", "t1", [1, 2])
    [claim] = spool.claim("srv")
    with caplog.at_level(logging.ERROR):
        started = spool.start(claim)
        plugins.load_handler(started.handler)(TaskStatus(claim), started.input)
        assert spool.finish_if_not_done(claim)
    assert spool.status("T", "t1") is State.FINISHED
    assert spool.response("T", "t1") == ("3", "text/xml")
    assert [name for name, _ in recorder.calls] == ["enqueued", "started", "finished"]
    ours = [r for r in caplog.records if r.name == "spoolatp.plugins"]
    assert len(ours) == 2
    assert "'boom'" in ours[0].getMessage() and "spoolatp_task_started" in ours[0].getMessage()
    assert ours[1].exc_info is not None and "still down" in str(ours[1].exc_info[1])
    assert not [r for r in caplog.records if r.name == "spoolatp.spool"]  # notify contained it, not the spool


def test_notify_refuses_unknown_events_and_ignores_extra_info() -> None:
    recorder = Recorder()
    plugins.register_plugin(recorder)
    with pytest.raises(ValueError, match="unknown task event 'exploded'"):
        plugins.notify("exploded", {})
    plugins.notify("retired", {"type_id": "T", "task_id": "t", "key": "k", "spool": "/somewhere"})
    assert recorder.calls == [("retired", {"type_id": "T", "task_id": "t", "key": "k"})]


# --------------------------------------------------------------------------- entry points of throwaway distributions


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A directory on ``sys.path`` to write throwaway distributions into; autoload on."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    made = Site(tmp_path / "site")
    made.path.mkdir()
    monkeypatch.syspath_prepend(str(made.path))
    yield made
    for module in made.modules:
        sys.modules.pop(module, None)


class Site:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tag = uuid.uuid4().hex[:8]
        self.modules: list[str] = []

    def module(self, stem: str, source: str) -> str:
        """Write a module with a unique name; return that name."""
        name = f"spoolatp_tmp_{stem}_{self.tag}"
        (self.path / f"{name}.py").write_text(source)
        self.modules.append(name)
        return name

    def distribution(self, name: str, entry_points: dict[str, str], version: str = "1.0") -> None:
        """Write a ``.dist-info`` directory: what pip leaves behind, found by importlib.metadata."""
        info = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[spoolatp]\n{lines}")


GOOD = """
from spoolatp import hookimpl

def handler(taskStatus, input):
    taskStatus.storeResponse("good")

@hookimpl
def spoolatp_register_handlers(register):
    register("tmp.good", handler)
"""


def test_a_plugin_that_fails_to_import_leaves_the_others_loadable_and_is_named(site: Site) -> None:
    good = site.module("good", GOOD)
    raising = site.module("raising", "raise RuntimeError('boom at import')\n")
    site.distribution("tmp-good", {"tmpgood": good})
    site.distribution("tmp-broken", {"tmpmissing": "spoolatp_tmp_no_such_module", "tmpraising": raising}, "2.5")

    pm = plugins.make_plugin_manager()
    assert pm.autoloaded
    handler = pm.load_handler("tmp.good")
    assert handler.__module__ == good
    problems = {p.plugin: p for p in pm.installed_handlers().problems}
    assert set(problems) == {"tmpmissing", "tmpraising"}
    missing = problems["tmpmissing"]
    assert (missing.entry_point, missing.distribution, missing.version) == (
        "tmpmissing = spoolatp_tmp_no_such_module",
        "tmp-broken",
        "2.5",
    )
    assert "ModuleNotFoundError" in missing.message and "tmp-broken 2.5" in missing.message
    assert "RuntimeError: boom at import" in problems["tmpraising"].message
    with pytest.raises(HandlerNotFound) as caught:
        pm.load_handler("tmp.missing")
    assert "tmpmissing = spoolatp_tmp_no_such_module" in str(caught.value)
    assert "tmp.good" in str(caught.value)


def test_entry_points_with_misspelt_hooks_or_wrong_signatures_are_problems_not_crashes(site: Site) -> None:
    good = site.module("good", GOOD)
    misspelt = site.module(
        "misspelt", "from spoolatp import hookimpl\n\n@hookimpl\ndef spoolatp_task_finishd(type_id):\n    pass\n"
    )
    wrong = site.module(
        "wrong",
        "from spoolatp import hookimpl\n\n@hookimpl\ndef spoolatp_register_handlers(register, config):\n    pass\n",
    )
    site.distribution("tmp-good", {"tmpgood": good})
    site.distribution("tmp-misspelt", {"tmpmisspelt": misspelt})
    site.distribution("tmp-wrong", {"tmpwrong": wrong})

    pm = plugins.make_plugin_manager()
    assert pm.can_run("tmp.good")
    problems = {p.plugin: p.message for p in pm.installed_handlers().problems}
    assert set(problems) == {"tmpmisspelt", "tmpwrong"}
    assert "unknown hook 'spoolatp_task_finishd'" in problems["tmpmisspelt"]
    assert "did you mean 'spoolatp_task_finished'?" in problems["tmpmisspelt"]
    assert "entry point 'tmpmisspelt = " in problems["tmpmisspelt"] and "tmp-misspelt 1.0" in problems["tmpmisspelt"]
    assert "spoolatp_register_handlers" in problems["tmpwrong"] and "config" in problems["tmpwrong"]
    assert not pm.has_plugin("tmpmisspelt") and not pm.has_plugin("tmpwrong")
    pm.check_pending()


def test_two_distributions_offering_one_handler_name_both_named(site: Site) -> None:
    first = site.module("first", GOOD)
    second = site.module("second", GOOD)
    site.distribution("tmp-first", {"tmpfirst": first})
    site.distribution("tmp-second", {"tmpsecond": second}, "3.1")
    pm = plugins.make_plugin_manager()
    with pytest.raises(PluginError) as caught:
        pm.load_handler("tmp.good")
    message = str(caught.value)
    assert "plugin 'tmpfirst' (entry point 'tmpfirst = " in message and "tmp-first 1.0" in message
    assert "plugin 'tmpsecond' (entry point 'tmpsecond = " in message and "tmp-second 3.1" in message


def test_autoload_disabled_skips_entry_points_but_explicit_registration_works(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = site.module("good", GOOD)
    site.distribution("tmp-good", {"tmpgood": good})
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    plugins.reset()
    assert not plugins.can_run("tmp.good")
    assert plugins.make_plugin_manager(autoload=True).autoloaded is False
    module = __import__(good)
    plugins.register_plugin(module)
    assert plugins.load_handler("tmp.good") is module.handler
    monkeypatch.delenv(AUTOLOAD_ENV)
    assert plugins.make_plugin_manager(autoload=False).can_run("tmp.good") is False
    assert plugins.make_plugin_manager(autoload=True).can_run("tmp.good") is True
