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
import sys
import typing as t

import blinker

from .errors import ConfigurationError, EncodingError, SignalBusError, SubscribeError
from .signals import Signal, split_channel

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
    name = getattr(signal, "name", None)
    if isinstance(name, str):
        makers = [
            module_name
            for module_name, values in _module_values()
            if any(isinstance(v, blinker.Namespace) and v.get(name) is signal for v in values)
        ]
        if makers:
            return f"{min(makers)}.{name}"
    holders = [
        f"{module_name}.{attribute}"
        for module_name, module in list(sys.modules.items())
        for attribute, value in _attributes(module)
        if value is signal
    ]
    if len(holders) == 1:
        return holders[0]
    where = f"it is held as {', '.join(sorted(holders))}" if holders else "no module holds it"
    raise ConfigurationError(
        f"cannot tell one channel for {signal!r} ({where}); give "
        "bus.bridge(signal, channel='namespace.name')"
    )


def _module_values() -> c.Iterator[tuple[str, list[t.Any]]]:
    for module_name, module in list(sys.modules.items()):
        yield module_name, [value for _, value in _attributes(module)]


def _attributes(module: t.Any) -> list[tuple[str, t.Any]]:
    try:
        return list(vars(module).items())
    except TypeError:  # a module stand-in without a __dict__
        return []


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
        if bus is None or bus.closed:
            return
        try:
            bus._publish(self, sender, kwargs)
        except EncodingError as exc:  # the library's values: delivered here, never raised
            bus._stats.add("unsendable")
            bus._log.warning(
                f"unsendable:{self.channel}",
                "signalbus: a send of bridged signal %r was delivered in this process only: %s",
                self.channel,
                exc,
            )
        except SignalBusError as exc:
            bus._stats.add("dropped")
            bus._log.warning(
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
