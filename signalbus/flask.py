"""The Flask extension: one line for an app, zero for the libraries it uses::

    from signalbus.flask import SignalBus

    signalbus_ext = SignalBus(app)          # or SignalBus(), then .init_app(app)

``init_app`` gives the app a bus made from ``app.config``: ``SIGNALBUS_URL`` (else
``$SIGNALBUS_URL``, else ``redis://localhost:6379/0``) and ``SIGNALBUS_<OPTION>`` for any
other :class:`~signalbus.Bus` option (``SIGNALBUS_PREFIX``, ``SIGNALBUS_QUEUE_FULL``,
``SIGNALBUS_HISTORY``...). It registers the app as a sender under its name, so
``connect_via(app)`` filters work in every worker; runs receivers of remote events
inside an application context; and adds the ``signalbus`` commands to ``flask``.
``SIGNALBUS_TYPES`` lists ``(cls, encode, decode)`` registrations (see
:meth:`~signalbus.Bus.register_type`), made before anything can arrive;
``SIGNALBUS_BRIDGE`` lists existing blinker signals to carry too (e.g.
``[flask_login.user_logged_in]``). The app travels as a sender under ``app.name``, which
is its import name: every process must make the app under the same one.

Several apps in one process (an app factory called once per test, apps mounted side
by side) each work. Apps with the same URL and prefix share one bus, made by the first:
a later app with other options for them replaces it (the earlier apps move to the new
one). Apps with another URL or prefix get a bus of their own; inside an app's context
a signal without a bus of its own travels on that app's bus, outside any on the bus of
the app set up last, and its receivers get the events of every app's bus. A receiver of
a remote event runs in an application context of the app the event was sent as, when
that is one of the bus's apps here, else of the bus's app set up last. A bus is closed
once every app that used it is gone (noticed at the next ``init_app``, or at exit).
Everything ``init_app`` applies is applied once however often it runs: a signal is
bridged once per bus, a type registered once.

Under gunicorn the workers receive and the master does not: with ``--preload`` the
master made the bus, and stops receiving as soon as it has forked its first worker;
each worker gets its own connections and threads when forked (see
:mod:`signalbus.bus`). Without ``--preload`` each worker runs ``init_app`` itself.

When Redis is down, requests go on: a send runs the local receivers and queues the
event, published once Redis is back; past ``queue_size`` events waiting, further ones
are dropped, logged and counted (``queue_full="drop"``, the default), so a request is
never held up or failed by Redis. A bad URL or option fails ``init_app``, at startup.

Importing :mod:`signalbus` never imports this module, nor Flask.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
import types
import weakref
from contextlib import AbstractContextManager
from typing import Any, cast

import blinker
import click

try:
    import flask
    import flask.cli
except ModuleNotFoundError as missing:  # the extra was not installed
    raise ModuleNotFoundError(
        f"signalbus.flask needs Flask ({missing}): pip install 'redis-signalbus[flask]'",
        name=missing.name,
    ) from None

from . import bus as bus_module
from .bus import Bus, guarded, url_or_default
from .cli import Settings, cli
from .errors import ConfigurationError

__all__ = ["SignalBus"]

# Every Bus option but those the extension sets itself.
_BUS_OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(Bus).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("client", "receiver_context")
)


class SignalBus:
    """signalbus for Flask apps; ``bus`` is the current app's bus (outside an app
    context: the bus of the app this extension set up last; None before any)."""

    def __init__(self, app: flask.Flask | None = None) -> None:
        self._last: weakref.ref[flask.Flask] | None = None
        if app is not None:
            self.init_app(app)

    @property
    def bus(self) -> Bus | None:
        last = None if self._last is None else self._last()
        return _current_app_bus() or (None if last is None else _app_buses.get(last))

    def init_app(self, app: flask.Flask) -> None:
        options = {
            name: app.config[f"SIGNALBUS_{name.upper()}"]
            for name in _BUS_OPTIONS
            if f"SIGNALBUS_{name.upper()}" in app.config
        }
        url = url_or_default(app.config.get("SIGNALBUS_URL"))
        with _lock:
            shared = _shared_bus(url, options)
            shared.add(app)
            _close_unused()
            bus_module.add_default(shared.bus)
            bus_module.set_chooser(_current_app_bus if len(_shared) > 1 else None)
        self._last = weakref.ref(app)
        app.extensions["signalbus"] = self
        app.cli.add_command(_commands())


class _SharedBus:
    """One bus and the apps of this process that use it (same URL and prefix)."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.options = options
        self._apps: list[weakref.ref[flask.Flask]] = []
        self.bus = Bus(url, receiver_context=self._context, **options)

    def apps(self) -> list[flask.Flask]:
        """The live apps using the bus, oldest first."""
        return [app for app in (ref() for ref in self._apps) if app is not None]

    def add(self, app: flask.Flask) -> None:
        """Let ``app`` use the bus: as a sender, with its types and bridges. A setting of
        the wrong shape is refused before anything is done."""
        types = _listed(app, "SIGNALBUS_TYPES", tuple, "(cls, encode, decode) tuples")
        signals = _listed(app, "SIGNALBUS_BRIDGE", blinker.Signal, "blinker signals")
        self._apps = [weakref.ref(known) for known in self.apps() if known is not app]
        self._apps.append(weakref.ref(app))
        _app_buses[app] = self.bus
        self.bus.register_sender(app, app.name)
        for registration in types:  # before anything arrives
            self.bus.register_type(*registration)
        for signal in signals:
            self.bus.bridge(signal)

    def _context(self, sender: Any) -> AbstractContextManager[object]:
        """Where a receiver of a remote event runs: in the app the event was sent as, if
        it is one of ours, else in the newest of ours."""
        apps = self.apps()
        if not apps:
            return contextlib.nullcontext()
        app = next((app for app in apps if app is sender), apps[-1])
        return app.app_context()


# The buses of this process's apps, by URL and prefix; guarded by _lock.
_shared: dict[tuple[str, str], _SharedBus] = {}
_app_buses: weakref.WeakKeyDictionary[flask.Flask, Bus] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _shared_bus(url: str, options: dict[str, Any]) -> _SharedBus:
    """The bus for apps with ``url`` and ``options``: the one such apps share, else a
    new one (which takes over the apps of a bus with the same URL and prefix but other
    options)."""
    key = (url, options.get("prefix", ""))
    known = _shared.get(key)
    if known is not None and not known.bus.closed and known.options == options:
        return known  # even if its apps are gone: the next test's app takes it over
    shared = _shared[key] = _SharedBus(url, options)
    if known is not None:
        for app in known.apps():
            shared.add(app)
        known.bus.close()
    return shared


def _listed(app: flask.Flask, option: str, kind: type, what: str) -> list[Any]:
    """``app.config[option]``, a list of ``kind``: one given alone (a signal, or one
    ``(cls, encode, decode)`` where a list of them was meant) is refused, not taken apart."""
    given = app.config.get(option, ())
    if not isinstance(given, list | tuple) or not all(isinstance(i, kind) for i in given):
        raise ConfigurationError(f"{option} must be a list of {what}, not {given!r}")
    return list(given)


def _close_unused() -> None:
    """Close the buses whose apps are all gone (the previous test's app, with another
    prefix)."""
    for key, shared in list(_shared.items()):
        if shared.bus.closed or not shared.apps():
            del _shared[key]
            shared.bus.close()


def _current_app_bus() -> Bus | None:
    """The bus of the app whose context this is, if it has one."""
    if not flask.has_app_context():
        return None
    # The app itself, not its proxy (as Flask's docs say to send signals with).
    return _app_buses.get(cast(Any, flask.current_app)._get_current_object())


def _commands() -> click.Group:
    """``flask signalbus ...``: the ``signalbus`` commands, on the app's bus settings."""

    @click.group("signalbus", commands=cli.commands)
    @click.pass_context
    @flask.cli.with_appcontext
    def commands(ctx: click.Context) -> None:
        """Look at the app's signalbus bus and act on it (as the signalbus command)."""
        config = flask.current_app.config
        url = url_or_default(config.get("SIGNALBUS_URL"))
        ctx.obj = Settings(url=url, prefix=config.get("SIGNALBUS_PREFIX", ""))

    return commands


def _after_fork_in_parent() -> None:
    """After a gunicorn master (``--preload``) forks a worker, it stops receiving."""
    if _shared and _spawning_gunicorn_worker():
        for shared in list(_shared.values()):
            if not shared.bus.closed:
                guarded(shared.bus.stop_receiving, "this gunicorn master goes on receiving too")


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


def _spawning_gunicorn_worker() -> bool:
    """Whether this fork is gunicorn's arbiter spawning a worker (its own code on the stack)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        code, module = frame.f_code, frame.f_globals.get("__name__")
        if code.co_name == "spawn_worker" and module == "gunicorn.arbiter":
            return True
        frame = frame.f_back
    return False


os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
