"""The Flask extension: one line for an app, zero for the libraries it uses::

    from signalbus.flask import SignalBus

    signalbus_ext = SignalBus(app)          # or SignalBus(), then .init_app(app)

``init_app`` makes the process's default bus from ``app.config``: ``SIGNALBUS_URL``
(else ``$SIGNALBUS_URL``, else ``redis://localhost:6379/0``) and ``SIGNALBUS_<OPTION>``
for any other :class:`~signalbus.Bus` option (``SIGNALBUS_PREFIX``,
``SIGNALBUS_QUEUE_FULL``, ``SIGNALBUS_HISTORY``...). It registers the app as a sender
under its name, so ``connect_via(app)`` filters work in every worker; runs receivers
of remote events inside an application context of the app; and adds the ``signalbus``
commands to ``flask``. ``SIGNALBUS_TYPES`` lists ``(cls, encode, decode)`` registrations
(see :meth:`~signalbus.Bus.register_type`), made before anything can arrive;
``SIGNALBUS_BRIDGE`` lists existing blinker signals to carry too (e.g.
``[flask_login.user_logged_in]``). The app travels as a sender under ``app.name``, which
is its import name: every process must make the app under the same one.

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

import inspect
import os
import sys
import types
import weakref

import click

try:
    import flask
    import flask.cli
except ModuleNotFoundError as missing:  # the extra was not installed
    raise ModuleNotFoundError(
        f"signalbus.flask needs Flask ({missing}): pip install 'redis-signalbus[flask]'",
        name=missing.name,
    ) from None

import signalbus

from .bus import Bus, guarded
from .cli import Settings, cli

__all__ = ["SignalBus"]

# Every Bus option but those the extension sets itself.
_BUS_OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(Bus).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("client", "receiver_context")
)


class SignalBus:
    """signalbus for a Flask app; ``bus`` is the process's bus once ``init_app`` ran."""

    def __init__(self, app: flask.Flask | None = None) -> None:
        self.bus: Bus | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        config = app.config
        options = {
            name: config[f"SIGNALBUS_{name.upper()}"]
            for name in _BUS_OPTIONS
            if f"SIGNALBUS_{name.upper()}" in config
        }
        bus = signalbus.configure(
            config.get("SIGNALBUS_URL"), receiver_context=app.app_context, **options
        )
        bus.register_sender(app, app.name)
        for registration in config.get("SIGNALBUS_TYPES", ()):  # before anything arrives
            bus.register_type(*registration)
        for signal in config.get("SIGNALBUS_BRIDGE", ()):
            bus.bridge(signal)
        self.bus = bus
        app.extensions["signalbus"] = self
        app.cli.add_command(_commands())
        _stop_receiving_in_gunicorn_master(bus)


def _commands() -> click.Group:
    """``flask signalbus ...``: the ``signalbus`` commands, on the app's bus settings."""

    @click.group("signalbus", commands=cli.commands)
    @click.pass_context
    @flask.cli.with_appcontext
    def commands(ctx: click.Context) -> None:
        """Look at the app's signalbus bus and act on it (as the signalbus command)."""
        config = flask.current_app.config
        url = config.get("SIGNALBUS_URL") or os.environ.get("SIGNALBUS_URL")
        ctx.obj = Settings(url=url or Settings.url, prefix=config.get("SIGNALBUS_PREFIX", ""))

    return commands


def _stop_receiving_in_gunicorn_master(bus: Bus) -> None:
    """After a gunicorn master (``--preload``) forks a worker, it stops receiving."""
    reference = weakref.ref(bus)

    def after_fork_in_parent() -> None:
        forked = reference()
        if forked is not None and not forked.closed and _spawning_gunicorn_worker():
            guarded(forked._stop_receiving, "this gunicorn master goes on receiving too")

    os.register_at_fork(after_in_parent=after_fork_in_parent)


def _spawning_gunicorn_worker() -> bool:
    """Whether this fork is gunicorn's arbiter spawning a worker (its own code on the stack)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        code, module = frame.f_code, frame.f_globals.get("__name__")
        if code.co_name == "spawn_worker" and module == "gunicorn.arbiter":
            return True
        frame = frame.f_back
    return False
