"""Bridges: existing blinker signals carried over a bus, without touching their library.

``bus.bridge(flask_login.user_logged_in)`` connects one receiver of the bus's own to
the signal, which publishes every local send; and makes the bus deliver remote events
of that channel to the signal's receivers in this process, by calling them directly,
never through ``send()``, so nothing loops back. The sending process skips its own
events as for any signal, so no receiver runs twice there.

A bridged signal belongs to a library, so a value that cannot travel is not raised
into the library's ``send()``: the local receivers run as usual, and it is logged
(with how to register it; at most once in a while per signal) and counted in
``stats()["unsendable"]``, apart from events Redis could not take (``dropped``).
"""

from __future__ import annotations

import collections.abc as c
import os
import sys
import threading
import typing as t
import weakref

import blinker

from .errors import ConfigurationError, EncodingError, SignalBusError, SubscribeError
from .receiver_context import bridges_publish
from .signals import Signal, split_channel
from .stats import ThrottledLog

if t.TYPE_CHECKING:
    from .bus import Bus

__all__ = ["BridgedSignal", "default_channel"]


def default_channel(signal: blinker.Signal) -> str:
    """A channel for ``signal`` that every process works out alike, and readable.

    A named signal made by a blinker ``Namespace`` gets ``<module>.<name>``, the module
    being the one that holds the namespace, where the signal was made: flask-login's
    ``user_logged_in`` is ``flask_login.signals.logged-in``, as signalbus would name it.
    Any other signal takes ``<module>.<attribute>`` of the one module that holds it.
    """
    with _lock:
        for everything in (False, True):  # a miss reads every module again, once
            _places.read(everything)
            channel = _places.channel(signal)
            if channel is not None:
                return channel
        holders = _places.holders(signal)
    where = f"it is held as {', '.join(holders)}" if holders else "no module holds it"
    raise ConfigurationError(
        f"cannot tell one channel for {signal!r} ({where}); give "
        "bus.bridge(signal, channel='namespace.name')"
    )


class _Places:
    """Where the loaded modules hold blinker namespaces and signals.

    Each module is read once, when a bridge first asks after it was loaded, so that an
    app bridging signals at every start (one app per test) costs a look-up, not a walk
    through every attribute of every module. The standard library holds no signals.
    """

    def __init__(self) -> None:
        self._read: set[str] = set()
        self._makers: weakref.WeakKeyDictionary[blinker.Signal, set[str]]
        self._holders: weakref.WeakKeyDictionary[blinker.Signal, set[str]]
        self._forget()

    def _forget(self) -> None:
        self._read = set()
        self._makers = weakref.WeakKeyDictionary()
        self._holders = weakref.WeakKeyDictionary()

    def read(self, everything: bool) -> None:
        """Read the modules loaded since the last call (or all of them again)."""
        if everything:
            self._forget()
        for module_name, module in list(sys.modules.items()):
            if module_name in self._read:
                continue
            self._read.add(module_name)
            if module_name.partition(".")[0] in sys.stdlib_module_names:
                continue
            for attribute, value in _attributes(module):
                if isinstance(value, blinker.Namespace):
                    for made in list(value.values()):
                        self._makers.setdefault(made, set()).add(module_name)
                elif isinstance(value, blinker.Signal):
                    self._holders.setdefault(value, set()).add(f"{module_name}.{attribute}")

    def channel(self, signal: blinker.Signal) -> str | None:
        name = getattr(signal, "name", None)
        makers = self._makers.get(signal)
        if isinstance(name, str) and makers:
            return f"{min(makers)}.{name}"
        holders = self.holders(signal)
        return holders[0] if len(holders) == 1 else None

    def holders(self, signal: blinker.Signal) -> list[str]:
        return sorted(self._holders.get(signal, ()))


def _attributes(module: t.Any) -> list[tuple[str, t.Any]]:
    try:
        return list(vars(module).items())
    except TypeError:  # a module stand-in without a __dict__
        return []


def _after_fork_in_child() -> None:
    global _lock, _log
    _lock = threading.Lock()  # another thread may have held it at the fork
    _log = ThrottledLog()


_places = _Places()
_lock = threading.Lock()
# Per process, not per bus: an app per test makes a bus per test, and each would log.
_log = ThrottledLog()
os.register_at_fork(after_in_child=_after_fork_in_child)


class BridgedSignal(Signal):
    """The bus's side of an existing blinker signal: its channel, and its receivers."""

    def __init__(self, original: blinker.Signal, channel: str, bus: Bus) -> None:
        namespace, name = split_channel(channel)
        # blinker keeps a signal's own doc in the instance's __doc__; without one,
        # __doc__ is the class's docstring, which says nothing of this signal.
        super().__init__(name, vars(original).get("__doc__"), namespace=namespace, bus=bus)
        self.original = original
        original.connect(self._publish_local, weak=False)
        # Keeps this process subscribed to the channel while the bridge stands.
        try:
            super().connect(_placeholder, weak=False)
        except SubscribeError:
            self.close()
            raise

    def receivers_for(self, sender: t.Any) -> c.Generator[c.Callable[..., t.Any], None, None]:
        """The original signal's receivers, but the bridge's own (none while it is muted)."""
        if getattr(self.original, "is_muted", False):
            return
        for receiver in self.original.receivers_for(sender):
            if receiver != self._publish_local:
                yield receiver

    def _publish_local(self, sender: t.Any, /, **kwargs: t.Any) -> None:
        bus = self._bus
        if bus is None or bus.closed or not bridges_publish():
            return
        try:
            bus.publish(self, sender, kwargs)
        except EncodingError as exc:  # the library's values: delivered here, never raised
            bus.count("unsendable")
            _log.warning(
                f"unsendable:{self.channel}",
                "signalbus: a send of bridged signal %r was delivered in this process only: %s",
                self.channel,
                exc,
            )
        except SignalBusError as exc:
            bus.count("dropped")
            _log.warning(
                f"bridge:{self.channel}",
                "signalbus: bridged signal %r not published: %s",
                self.channel,
                exc,
            )

    def close(self) -> None:
        """Stop publishing the original signal's sends."""
        self.original.disconnect(self._publish_local)


def _placeholder(sender: t.Any, /, **kwargs: t.Any) -> None:
    """Never called: remote events go to the original signal's receivers."""
