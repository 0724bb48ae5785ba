"""Plugins: hook specifications, the ``hookimpl`` marker, the plugin manager and handler lookup.

A handler package is an ordinary distribution with an entry point in the group
``spoolatp`` that names a module (or any object) implementing
:meth:`HookSpecs.spoolatp_register_handlers`::

    [project.entry-points.spoolatp]
    sequence_sum = "spoolatp_sequence_sum"

A task type names its handler by the name a plugin registered it under
(``registerTaskType("SequenceSum", "sequence_sum", 60, 600, 3)``), never by an
import path: only installed plugins run code.

Each process builds one plugin manager on first use (:func:`get_plugin_manager`):
the built-in plugin, then each entry point of the group, one at a time. An entry
point that fails to import, implements an unknown (misspelt) hook or has a hook
implementation with arguments its hook lacks is left out and recorded as a
:class:`PluginProblem`; the other plugins keep working, so a daemon that meets
one broken package still serves every other task type. Problems surface where
they matter: in :class:`~spoolatp.errors.HandlerNotFound` and in
:func:`installed_handlers`. Registering a plugin explicitly
(:func:`register_plugin`) raises :class:`~spoolatp.errors.PluginError` instead.

``SPOOLATP_DISABLE_PLUGIN_AUTOLOAD=1`` skips the entry points, as pytest's
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does; plugins are then registered explicitly.

spoolatp calls each plugin's hook implementation on its own rather than through
one pluggy hook call, so that every handler is attributed to its plugin and one
plugin's exception cannot keep the others from being called. For the same
reason ``wrapper``/``hookwrapper`` implementations are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pluggy

from spoolatp.errors import HandlerNotFound, PluginError

if TYPE_CHECKING:
    from spoolatp.tracker import TaskStatus

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_PLUGIN",
    "ENTRY_POINT_GROUP",
    "EVENTS",
    "BuiltinPlugin",
    "Handler",
    "HandlerInfo",
    "HookSpecs",
    "Installed",
    "PluginProblem",
    "Register",
    "SpoolatpPluginManager",
    "autoload_disabled",
    "can_run",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "installed_handlers",
    "load_handler",
    "make_plugin_manager",
    "notify",
    "register_plugin",
    "reset",
]

log = logging.getLogger(__name__)

PROJECT = "spoolatp"
#: the entry point group handler packages declare their plugin in
ENTRY_POINT_GROUP = "spoolatp"
#: set to a non-empty value other than ``0`` to skip entry-point plugins
AUTOLOAD_ENV = "SPOOLATP_DISABLE_PLUGIN_AUTOLOAD"
#: the name the built-in plugin is registered under
BUILTIN_PLUGIN = "spoolatp.builtin"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: handler names: letters, digits and ``_``, in parts joined by ``.`` or ``-``
_HANDLER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.-][A-Za-z0-9_]+)*\Z")
_MAX_HANDLER_NAME = 100

#: the spool's event names, their hooks and the hook arguments taken from the event's info
_EVENT_HOOKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "enqueued": ("spoolatp_task_enqueued", ("type_id", "task_id", "key")),
    "started": ("spoolatp_task_started", ("type_id", "task_id", "key", "attempt")),
    "finished": ("spoolatp_task_finished", ("type_id", "task_id", "key", "message")),
    "failed": ("spoolatp_task_failed", ("type_id", "task_id", "key", "message")),
    "reenqueued": ("spoolatp_task_reenqueued", ("type_id", "task_id", "key", "message")),
    "retired": ("spoolatp_task_retired", ("type_id", "task_id", "key")),
}
_EVENT_DEFAULTS: dict[str, Any] = {"attempt": None, "message": ""}
EVENTS = tuple(_EVENT_HOOKS)


class Handler(Protocol):
    """A handler: called with its task's :class:`~spoolatp.tracker.TaskStatus` and the task's input.

    It may end its task with ``taskStatus.setSuccess``/``setFailure``; if it
    returns without doing so the consumer marks the task FINISHED, and if it
    raises the consumer marks it FAILED. The return value is ignored.
    """

    def __call__(self, taskStatus: TaskStatus, input: Any, /) -> object: ...


#: what :meth:`HookSpecs.spoolatp_register_handlers` receives: ``register(name, handler)``
Register = Callable[[str, Handler], None]


class HookSpecs:
    """The hooks a spoolatp plugin may implement; every one is optional.

    Implement them as functions of a module (or methods of an object) marked
    with :data:`hookimpl`. An implementation may take any subset of a hook's
    arguments, by name.
    """

    @hookspec
    def spoolatp_register_handlers(self, register: Register) -> None:
        """Offer handlers: call ``register(name, handler)`` once for each handler this plugin offers.

        Called once per process and plugin, the first time a handler is looked up,
        checked or listed (again after plugins are registered or unregistered).
        ``name`` is what task types give as their handler, e.g. ``"sequence_sum"``
        or ``"mypackage.convert"``: letters, digits and ``_`` in parts joined by
        ``.`` or ``-``, at most 100 characters. ``handler`` is any callable
        matching :class:`Handler`.

        The return value is ignored. If this raises (``register`` raises
        :class:`~spoolatp.errors.PluginError` for a bad name, a non-callable or a
        name registered twice), none of this plugin's handlers is offered and the
        error is reported as a :class:`PluginProblem`. A name offered by two
        plugins is offered by neither: looking it up raises ``PluginError``
        naming both.
        """

    @hookspec
    def spoolatp_task_enqueued(self, type_id: str, task_id: str, key: str) -> None:
        """A task was enqueued; called in the producer's process once the task is in ``enqueued/``.

        ``key`` is the task's key in the spool (see :mod:`spoolatp.spool`).
        The return value is ignored; an exception is logged and does not affect the task.
        """

    @hookspec
    def spoolatp_task_started(self, type_id: str, task_id: str, key: str, attempt: int) -> None:
        """A consumer started a task (SCHEDULED -> RUNNING); called in the consumer's process.

        ``attempt`` counts the task's claims, 1 for the first. Called before the
        handler runs. The return value is ignored; an exception is logged and
        does not affect the task.
        """

    @hookspec
    def spoolatp_task_finished(self, type_id: str, task_id: str, key: str, message: str) -> None:
        """A task ended FINISHED; called in the process that ended it, once the state is published.

        ``message`` is the final log message. The return value is ignored; an
        exception is logged and does not affect the task.
        """

    @hookspec
    def spoolatp_task_failed(self, type_id: str, task_id: str, key: str, message: str) -> None:
        """A task ended FAILED: its handler failed, or it was abandoned once too often.

        Called in the process that failed it (the consumer, or the sweeper that
        used up its restarts), once the state is published. ``message`` says why.
        The return value is ignored; an exception is logged and does not affect the task.
        """

    @hookspec
    def spoolatp_task_reenqueued(self, type_id: str, task_id: str, key: str, message: str) -> None:
        """An abandoned task went back to the queue; called in the process that took it back.

        ``message`` says why and which restart this is. The return value is
        ignored; an exception is logged and does not affect the task.
        """

    @hookspec
    def spoolatp_task_retired(self, type_id: str, task_id: str, key: str) -> None:
        """A FINISHED or FAILED task was deleted after its retention time, by the sweeping process.

        Tasks deleted on request (``deleteTaskByIdentifier``) are not reported.
        The return value is ignored; an exception is logged.
        """


def dummy_handler(taskStatus: TaskStatus, input: Any) -> None:
    """The guide's ``dummyHandler``: log that it ran; the consumer then finishes the task."""
    taskStatus.log(f"dummy handler called with input {input!r:.200}")


class BuiltinPlugin:
    """What spoolatp itself offers, registered like any other plugin as ``spoolatp.builtin``."""

    @hookimpl
    def spoolatp_register_handlers(self, register: Register) -> None:
        register("spoolatp.dummy", dummy_handler)


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class HandlerInfo:
    """An installed handler and where it comes from."""

    name: str
    #: the name its plugin is registered under (for installed packages: the entry point's name)
    plugin: str
    #: ``"name = module:attr"``, or None for a plugin registered explicitly
    entry_point: str | None
    #: the distribution (package) providing it, and its version, when known
    distribution: str | None
    version: str | None
    handler: Handler = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be loaded, or a handler name that two plugins claim."""

    #: the plugin's name (entry point name); both names, joined by ``", "``, for a clash
    plugin: str
    message: str
    entry_point: str | None = None
    distribution: str | None = None
    version: str | None = None
    error: BaseException | None = dataclasses.field(default=None, repr=False, compare=False)


class Installed(NamedTuple):
    """What :func:`installed_handlers` returns: the usable handlers, and what went wrong."""

    handlers: list[HandlerInfo]
    problems: list[PluginProblem]


@dataclasses.dataclass(frozen=True)
class _Origin:
    entry_point: str | None
    distribution: str | None
    version: str | None


@dataclasses.dataclass(frozen=True)
class _Catalogue:
    handlers: dict[str, HandlerInfo]
    clashes: dict[str, str]
    problems: list[PluginProblem]


_Listener = tuple[Callable[..., object], tuple[str, ...], str]


class _Collector:
    """The ``register`` callable one plugin's ``spoolatp_register_handlers`` receives."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.offered: dict[str, Handler] = {}
        self.closed = False

    def __call__(self, name: str, handler: Handler) -> None:
        if self.closed:
            raise PluginError(
                f"{self.plugin} called register({name!r}, ...) after its spoolatp_register_handlers hook "
                "returned; register handlers inside the hook"
            )
        if not isinstance(name, str) or len(name) > _MAX_HANDLER_NAME or not _HANDLER_NAME.match(name):
            raise PluginError(
                f"{self.plugin} registers a handler under the invalid name {name!r}; use letters, digits and '_' "
                "in parts joined by '.' or '-', e.g. 'mypackage.convert'"
            )
        if not callable(handler):
            raise PluginError(f"{self.plugin} registers handler {name!r} as {handler!r}, which is not callable")
        if name in self.offered:
            raise PluginError(f"{self.plugin} registers handler {name!r} twice")
        self.offered[name] = handler


# --------------------------------------------------------------------------- the manager


class SpoolatpPluginManager(pluggy.PluginManager):
    """A pluggy plugin manager that knows spoolatp's hooks, handlers and events.

    Build one with :func:`make_plugin_manager`; the process-wide one comes from
    :func:`get_plugin_manager`. Handlers and event listeners are collected once
    and cached until a plugin is registered or unregistered.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(HookSpecs)
        #: entry points that could not be loaded (see :meth:`load_entry_points`)
        self.problems: list[PluginProblem] = []
        #: whether :meth:`load_entry_points` ran
        self.autoloaded = False
        self._origins: dict[str, _Origin] = {}
        self._lock = threading.RLock()
        self._catalogue: _Catalogue | None = None
        self._listeners: dict[str, tuple[_Listener, ...]] | None = None

    # ------------------------------------------------------------------ registration

    def get_canonical_name(self, plugin: object) -> str:
        """A module's name; for other objects their class's dotted name (plus ``#2``... if taken)."""
        name = getattr(plugin, "__name__", None)
        if isinstance(name, str):
            return name
        base = f"{type(plugin).__module__}.{type(plugin).__qualname__}"
        name, n = base, 1
        while self.get_plugin(name) not in (None, plugin):
            n += 1
            name = f"{base}#{n}"
        return name

    def register(self, plugin: object, name: str | None = None, *, origin: _Origin | None = None) -> str | None:
        """Register a plugin object (a module, a class instance...); return its name, None if blocked.

        :raises PluginError: the plugin implements an unknown hook, has a hook
            implementation with arguments its hook does not have or marked as a
            wrapper, or the plugin or its name is already registered. The manager
            is then left as it was.
        """
        with self._lock:
            plugin_name = name or self.get_canonical_name(plugin)
            if self.is_blocked(plugin_name):
                return None
            if self.has_plugin(plugin_name):
                raise PluginError(
                    f"cannot register {self._describe(plugin_name, origin, plugin)}: the name {plugin_name!r} is "
                    f"taken by {self.describe(plugin_name)}; register it under another name"
                )
            if self.is_registered(plugin):
                raise PluginError(f"{plugin!r} is already registered as plugin {self.get_name(plugin)!r}")
            try:
                super().register(plugin, plugin_name)
            except pluggy.PluginValidationError as exc:
                self._undo(plugin)
                detail = " ".join(str(exc).split())
                raise PluginError(
                    f"{self._describe(plugin_name, origin, plugin)} has a hook implementation that does not fit its "
                    f"hook specification: {detail}; see spoolatp.plugins.HookSpecs for the arguments"
                ) from exc
            try:
                self._check(plugin, plugin_name, origin)
            except PluginError:
                self._undo(plugin)
                raise
            if origin is not None:
                self._origins[plugin_name] = origin
            self._invalidate()
            return plugin_name

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        with self._lock:
            plugin_name = name if name is not None else self.get_name(plugin)
            found = super().unregister(plugin, name)
            if plugin_name is not None:
                self._origins.pop(plugin_name, None)
            self._invalidate()
            return found

    def _undo(self, plugin: object) -> None:
        if self.get_name(plugin) is not None:
            super().unregister(plugin)

    def _check(self, plugin: object, plugin_name: str, origin: _Origin | None) -> None:
        """Refuse unknown hooks (via ``check_pending``) and wrapper implementations."""
        who = self._describe(plugin_name, origin, plugin)
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            # every plugin registered earlier passed this check, so the culprit is the new one
            unknown = sorted({hc.name for hc in self.get_hookcallers(exc.plugin) or [] if not hc.has_spec()}) or ["?"]
            known = [n for n in dir(HookSpecs) if n.startswith(f"{PROJECT}_")]
            hints = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
            hint = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
            raise PluginError(
                f"{who} implements unknown hook {', '.join(map(repr, unknown))}{hint}; spoolatp's hooks are "
                f"{', '.join(known)}, or mark the implementation @hookimpl(optionalhook=True)"
            ) from exc
        for hc in self.get_hookcallers(plugin) or []:
            for impl in hc.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    raise PluginError(
                        f"{who} implements {hc.name!r} as a wrapper; spoolatp calls each plugin's implementation "
                        "on its own, so wrapper=True and hookwrapper=True are not supported"
                    )

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Load and register the plugins of entry point ``group``; return how many were registered.

        Like pluggy's ``load_setuptools_entrypoints``, but one entry point at a
        time: one that fails to import or to register is logged and recorded in
        :attr:`problems`, and the others still load.
        """
        import importlib.metadata

        count = 0
        self.autoloaded = True
        entry_points = importlib.metadata.entry_points(group=group)
        for ep in sorted(entry_points, key=lambda e: (e.name, e.dist.name if e.dist else "")):
            dist = ep.dist
            origin = _Origin(f"{ep.name} = {ep.value}", dist.name if dist else None, dist.version if dist else None)
            if self.is_blocked(ep.name):
                continue
            if self.has_plugin(ep.name):
                self._problem(
                    ep.name,
                    origin,
                    f"{self._describe(ep.name, origin)} is not loaded: its name is taken by "
                    f"{self.describe(ep.name)}; rename one of the entry points",
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._problem(
                    ep.name,
                    origin,
                    f"{self._describe(ep.name, origin)} failed to import: {type(exc).__name__}: {exc}; "
                    "its handlers are unavailable until it is fixed or uninstalled",
                    exc,
                )
                continue
            try:
                self.register(plugin, name=ep.name, origin=origin)
            except PluginError as exc:
                self._problem(ep.name, origin, str(exc), exc)
                continue
            count += 1
        return count

    def _problem(self, name: str, origin: _Origin, message: str, error: BaseException | None = None) -> None:
        log.error("%s", message)
        self.problems.append(
            PluginProblem(name, message, origin.entry_point, origin.distribution, origin.version, error)
        )

    def describe(self, plugin_name: str) -> str:
        """``plugin 'x' (entry point 'x = mod' of distribution d 1.0)``: a plugin named for messages."""
        return self._describe(plugin_name, self._origins.get(plugin_name), self.get_plugin(plugin_name))

    @staticmethod
    def _describe(plugin_name: str, origin: _Origin | None, plugin: object = None) -> str:
        if origin is None:
            return f"plugin {plugin_name!r}" + (f" ({plugin!r})" if plugin is not None else "")
        dist = f"{origin.distribution} {origin.version or ''}".strip() if origin.distribution else "unknown"
        if origin.entry_point:
            return f"plugin {plugin_name!r} (entry point '{origin.entry_point}' of distribution {dist})"
        return f"plugin {plugin_name!r} (built into {dist})"

    # ------------------------------------------------------------------ handlers

    def _invalidate(self) -> None:
        with self._lock:
            self._catalogue = None
            self._listeners = None

    def _get_catalogue(self) -> _Catalogue:
        catalogue = self._catalogue
        if catalogue is None:
            with self._lock:
                catalogue = self._catalogue
                if catalogue is None:
                    catalogue = self._catalogue = self._collect_handlers()
        return catalogue

    def _collect_handlers(self) -> _Catalogue:
        offers: dict[str, list[HandlerInfo]] = {}
        problems: list[PluginProblem] = []
        for impl in reversed(self.hook.spoolatp_register_handlers.get_hookimpls()):
            name = impl.plugin_name
            origin = self._origins.get(name) or _Origin(None, None, None)
            collector = _Collector(self.describe(name))
            try:
                _call(impl.function, impl.argnames, {"register": collector})
            except Exception as exc:
                message = (
                    str(exc)
                    if isinstance(exc, PluginError)
                    else (f"{collector.plugin} raised {type(exc).__name__}: {exc} in spoolatp_register_handlers")
                )
                message += "; none of its handlers is offered"
                log.error("%s", message)
                problems.append(
                    PluginProblem(name, message, origin.entry_point, origin.distribution, origin.version, exc)
                )
                continue
            finally:
                collector.closed = True
            for handler_name, handler in collector.offered.items():
                info = HandlerInfo(handler_name, name, origin.entry_point, origin.distribution, origin.version, handler)
                offers.setdefault(handler_name, []).append(info)
        handlers: dict[str, HandlerInfo] = {}
        clashes: dict[str, str] = {}
        for handler_name, infos in sorted(offers.items()):
            if len(infos) == 1:
                handlers[handler_name] = infos[0]
                continue
            who = " and ".join(self.describe(i.plugin) for i in infos)
            message = (
                f"handler {handler_name!r} is offered by more than one plugin: {who}; "
                "uninstall or unregister all but one of them"
            )
            clashes[handler_name] = message
            log.error("%s", message)
            problems.append(
                PluginProblem(
                    ", ".join(i.plugin for i in infos),
                    message,
                    distribution=", ".join(i.distribution or "?" for i in infos),
                )
            )
        return _Catalogue(handlers, clashes, problems)

    def load_handler(self, name: str) -> Handler:
        """The handler registered as ``name``.

        :raises HandlerNotFound: no plugin offers it; the message names the
            handler, this host, the installed handlers and any plugin that could
            not be loaded (it may be the one that offers it).
        :raises PluginError: two plugins offer it (the message names both).
        """
        catalogue = self._get_catalogue()
        info = catalogue.handlers.get(name)
        if info is not None:
            return info.handler
        if name in catalogue.clashes:
            raise PluginError(catalogue.clashes[name])
        raise HandlerNotFound(self._not_found(name, catalogue))

    def _not_found(self, name: str, catalogue: _Catalogue) -> str:
        installed = sorted(catalogue.handlers)
        parts = [
            f"no installed plugin offers handler {name!r} on host {socket.gethostname()!r}",
            f"installed handlers: {', '.join(installed) if installed else 'none'}",
        ]
        close = difflib.get_close_matches(name, installed, n=1) if isinstance(name, str) else []
        if close:
            parts.append(f"did you mean {close[0]!r}?")
        problems = [*self.problems, *catalogue.problems]
        if problems:
            parts.append(f"plugins with problems (one may offer it): {'; '.join(p.message for p in problems)}")
        if not self.autoloaded:
            parts.append(f"entry-point plugins were not loaded ({AUTOLOAD_ENV} is set or autoload is off)")
        parts.append(
            "install the package that provides it on this host, or register the task type with an installed handler"
        )
        return "; ".join(parts)

    def can_run(self, name: str) -> bool:
        """Whether :meth:`load_handler` would find ``name``: cheap once the handlers are collected."""
        return name in self._get_catalogue().handlers

    def installed_handlers(self) -> Installed:
        """The usable handlers, sorted by name, and the problems met collecting them."""
        catalogue = self._get_catalogue()
        return Installed(list(catalogue.handlers.values()), [*self.problems, *catalogue.problems])

    # ------------------------------------------------------------------ lifecycle events

    def notify(self, event: str, info: Mapping[str, Any]) -> None:
        """Call the lifecycle hook of spool event ``event`` on every plugin implementing it.

        Each implementation is called on its own; one that raises is logged and
        the others are still called. Costs one dictionary lookup when no plugin
        implements the hook.

        :raises ValueError: ``event`` is not one of :data:`EVENTS`.
        """
        listeners = self._listeners
        if listeners is None:
            listeners = self._collect_listeners()
        calls = listeners.get(event)
        if calls is None:
            raise ValueError(f"unknown task event {event!r}; spoolatp knows {', '.join(EVENTS)}")
        if not calls:
            return
        kwargs = {arg: info.get(arg, _EVENT_DEFAULTS.get(arg)) for arg in _EVENT_HOOKS[event][1]}
        for function, argnames, plugin_name in calls:
            try:
                _call(function, argnames, kwargs)
            except Exception:
                log.exception(
                    "plugin %r failed in %s for task %r/%r; the task is not affected",
                    plugin_name,
                    _EVENT_HOOKS[event][0],
                    kwargs.get("type_id"),
                    kwargs.get("task_id"),
                )

    def _collect_listeners(self) -> dict[str, tuple[_Listener, ...]]:
        with self._lock:
            listeners = self._listeners
            if listeners is None:
                listeners = self._listeners = {
                    event: tuple(
                        (impl.function, impl.argnames, impl.plugin_name)
                        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls())
                    )
                    for event, (hook_name, _) in _EVENT_HOOKS.items()
                }
            return listeners


def _call(function: Callable[..., object], argnames: tuple[str, ...], kwargs: Mapping[str, Any]) -> object:
    """Call one hook implementation the way pluggy does: its arguments by name, passed positionally."""
    return function(*[kwargs[name] for name in argnames])


# --------------------------------------------------------------------------- the process-wide manager


_lock = threading.Lock()
_manager: SpoolatpPluginManager | None = None


def autoload_disabled() -> bool:
    """Whether ``SPOOLATP_DISABLE_PLUGIN_AUTOLOAD`` is set (to anything but ``""`` or ``"0"``)."""
    return os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0")


def make_plugin_manager(autoload: bool = True) -> SpoolatpPluginManager:
    """A new plugin manager: the built-in plugin, then (with ``autoload``) every entry-point plugin.

    ``SPOOLATP_DISABLE_PLUGIN_AUTOLOAD`` overrides ``autoload=True``. Broken
    entry points do not raise; they are in the manager's ``problems``.
    """
    import importlib.metadata

    try:
        version: str | None = importlib.metadata.version(PROJECT)
    except importlib.metadata.PackageNotFoundError:
        version = None
    pm = SpoolatpPluginManager()
    pm.register(BuiltinPlugin(), name=BUILTIN_PLUGIN, origin=_Origin(None, PROJECT, version))
    if autoload and not autoload_disabled():
        pm.load_entry_points()
    return pm


def get_plugin_manager() -> SpoolatpPluginManager:
    """This process's plugin manager, built by :func:`make_plugin_manager` on first use."""
    global _manager
    pm = _manager
    if pm is None:
        with _lock:
            pm = _manager
            if pm is None:
                pm = _manager = make_plugin_manager()
    return pm


def reset() -> None:
    """Forget this process's plugin manager; the next use builds a new one (for tests)."""
    global _manager
    with _lock:
        _manager = None


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register ``plugin`` on this process's manager; return its name (None if the name is blocked).

    :raises PluginError: the plugin is broken (see :meth:`SpoolatpPluginManager.register`).
    """
    return get_plugin_manager().register(plugin, name)


def load_handler(name: str) -> Handler:
    """The installed handler registered as ``name``.

    :raises HandlerNotFound: no plugin offers it on this host.
    :raises PluginError: two plugins offer it.
    """
    return get_plugin_manager().load_handler(name)


def can_run(name: str) -> bool:
    """Whether a handler named ``name`` is installed (and unambiguous) in this process."""
    return get_plugin_manager().can_run(name)


def installed_handlers() -> Installed:
    """``(handlers, problems)``: the usable handlers, sorted by name, and the plugins that failed."""
    return get_plugin_manager().installed_handlers()


def notify(event: str, info: dict[str, Any]) -> None:
    """Tell the plugins about a spool event; the ``on_event`` every tracker spool is built with.

    ``event`` is one of :data:`EVENTS`; ``info`` holds ``type_id``, ``task_id``,
    ``key`` and, depending on the event, ``attempt`` or ``message``.
    """
    pm = _manager
    (pm if pm is not None else get_plugin_manager()).notify(event, info)
