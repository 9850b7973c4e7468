"""The blinker face of signalbus: ``Namespace`` and ``Signal``.

A ``Signal`` is a ``blinker.NamedSignal`` that also publishes what it sends to its
bus, and whose receivers also get the events sent by other processes. Until it has a
bus (its own, or the default one made by ``configure()``) it is plain blinker.
"""

from __future__ import annotations

import asyncio
import collections.abc as c
import contextlib
import sys
import typing as t

import blinker
from blinker import _utilities as blinker_utilities

from . import bus as bus_module
from .errors import ConfigurationError, SubscribeError
from .event import Event, _current
from .groups import DeadLetter, Group, GroupStatus, as_group
from .history import HistoryOption, Keep, TimeBound
from .replay import ReplayReport
from .schema import check_schema, validated

__all__ = ["Namespace", "Signal", "default_namespace", "signal", "split_channel"]

F = t.TypeVar("F", bound=c.Callable[..., t.Any])


def _caller_module(depth: int) -> str:
    return str(sys._getframe(depth + 1).f_globals.get("__name__", "__main__"))


def split_channel(channel: str) -> tuple[str, str]:
    """The namespace and the signal name of ``channel``, split at its last dot (a channel
    without one is a signal of :data:`default_namespace`, whose channel is its name)."""
    namespace, dot, name = channel.rpartition(".") if isinstance(channel, str) else ("", "", "")
    if not name or (dot and not namespace):
        raise ConfigurationError(
            f"{channel!r} is not a channel name: <namespace>.<signal> (auth.logged-in) or a "
            "signal name alone (logged-in)"
        )
    return namespace, name


def _check_options(name: str, options: dict[str, t.Any]) -> None:
    if options:
        raise ConfigurationError(
            f"signal {name!r}: unknown options {sorted(options)}; see the signalbus docs"
        )


class _ReplayChoices(blinker.Signal):
    """Receivers that each say whether they take replayed events (``replays=False``)."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._replay_averse: set[c.Hashable] = set()  # ids of receivers that take none

    def _choose_replays(self, receiver: c.Callable[..., t.Any], replays: bool) -> None:
        receiver_id = blinker_utilities.make_id(receiver)
        if replays:
            self._replay_averse.discard(receiver_id)
        else:
            self._replay_averse.add(receiver_id)

    def takes_replays(self, receiver: c.Callable[..., t.Any]) -> bool:
        """Whether ``receiver`` gets replayed events (see :meth:`Signal.connect`)."""
        return blinker_utilities.make_id(receiver) not in self._replay_averse

    def _disconnect(self, receiver_id: c.Hashable, sender_id: c.Hashable) -> None:
        # Every disconnection passes here, including weak receivers being collected.
        super()._disconnect(receiver_id, sender_id)
        if receiver_id not in self.receivers:
            self._replay_averse.discard(receiver_id)


class Signal(_ReplayChoices, blinker.NamedSignal):
    """A named blinker signal whose events also reach the receivers of other processes.

    Everything blinker documents holds, with these additions: ``channel`` is the
    signal's name on the wire (``<namespace>.<name>``); ``send()`` encodes the event
    first, so a value that cannot travel raises :class:`~signalbus.EncodingError`
    before anything is delivered; then it queues the event for publishing and runs
    the local receivers, as blinker does. A muted signal neither delivers nor publishes.
    """

    def __init__(
        self,
        name: str,
        doc: str | None = None,
        *,
        namespace: str | None = None,
        bus: bus_module.Bus | None = None,
        history: HistoryOption = None,
        schema: type | None = None,
        **options: t.Any,
    ) -> None:
        _check_options(name, options)
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a signal's name must be a non-empty str, not {name!r}")
        super().__init__(name, doc)
        self.namespace = namespace if namespace is not None else _caller_module(1)
        self.channel = f"{self.namespace}.{name}" if self.namespace else name
        if schema is not None:
            check_schema(schema, self.channel)
        self.schema = schema
        """The pydantic model the arguments must fit (see :mod:`signalbus.schema`), or None."""
        self._bus = bus
        self.history_option = history
        """This signal's own say on history; ``None`` leaves it to its namespace, then bus."""
        # Where its events go on the bus that last sent it: channel key and history.
        self._route: tuple[bus_module.Bus, bytes, Keep | None] | None = None
        # Group receivers live apart from blinker's, so local and pub/sub sends skip them.
        self._groups: dict[str, tuple[Group, _ReplayChoices]] = {}
        if bus is None:
            bus_module.track_unbound(self)
        else:
            bus.define([self])

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} {self.channel!r}>"

    @property
    def bus(self) -> bus_module.Bus | None:
        """The bus this signal travels on: its own, else the default one, else None."""
        return self._bus if self._bus is not None else bus_module.default_bus()

    def _receiving_buses(self) -> tuple[bus_module.Bus, ...]:
        """The buses whose events reach this signal's receivers: its own, else every
        default bus (one per Flask app setting, say)."""
        return (self._bus,) if self._bus is not None else bus_module.default_buses()

    def history(
        self, since: TimeBound = None, until: TimeBound = None, limit: int | None = None
    ) -> c.Iterator[Event]:
        """The events this signal kept, oldest first, as :class:`~signalbus.Event`.

        ``since`` and ``until`` (both included) take a datetime, a timedelta back from
        now, or a stream entry id; ``limit`` caps how many are read.
        """
        return self._bus_or_raise().read_history(self, since, until, limit)

    def replay(
        self,
        since: TimeBound,
        until: TimeBound = None,
        *,
        limit: int | None = None,
        dry_run: bool = False,
        rate: float | None = None,
        progress: c.Callable[[Event], object] | None = None,
        group: str | None = None,
    ) -> ReplayReport:
        """Publish the events kept between ``since`` and ``until`` again, oldest first,
        to every process listening now, and return what was done.

        Receivers see ``current_event().replayed`` with the original id and timestamp;
        those connected with ``replays=False`` are skipped. ``dry_run`` publishes
        nothing and reports what would be replayed; ``rate`` paces the replay (events
        per second); ``progress`` is called with each event as it goes out. With
        ``group``, only that group's receivers get the events (one process each), and
        no broadcast receiver does. Returns once every replayed event is on the server.
        """
        return self._bus_or_raise().replay(
            self,
            since,
            until,
            limit=limit,
            dry_run=dry_run,
            rate=rate,
            progress=progress,
            group=group,
        )

    def _bus_or_raise(self) -> bus_module.Bus:
        bus = self.bus
        if bus is None:
            raise ConfigurationError(
                f"signal {self.channel!r} has no bus; call signalbus.configure() first"
            )
        return bus

    def connect(
        self,
        receiver: F,
        sender: t.Any = blinker.ANY,
        weak: bool = True,
        *,
        replays: bool = True,
        group: Group | str | None = None,
    ) -> F:
        """As blinker; also subscribes this process to the channel.

        Returns once the server has confirmed the subscription (or the bus's
        ``subscribe_timeout`` passed, which is logged), so an event another process
        sends right after is not missed. If Redis refuses the channel (the user's ACL
        lacks it), raises :class:`~signalbus.SubscribeError` and connects nothing.
        With ``replays=False`` the receiver never gets replayed events.

        With ``group`` (a name, or a :class:`~signalbus.Group`) the receiver is not a
        broadcast receiver: each event is handled by one process of the group, at
        least once (see :mod:`signalbus.groups`); the signal must keep history.
        """
        if group is not None:
            return self._connect_to_group(receiver, sender, weak, replays, as_group(group))
        super().connect(receiver, sender, weak)
        self._choose_replays(receiver, replays)
        try:
            for bus in self._receiving_buses():
                bus.watch([self])
        except (SubscribeError, ConfigurationError):
            self.disconnect(receiver, sender)
            raise
        return receiver

    def _connect_to_group(
        self, receiver: F, sender: t.Any, weak: bool, replays: bool, group: Group
    ) -> F:
        known = self._groups.get(group.name)
        if known is not None and known[0] != group:
            raise ConfigurationError(
                f"signal {self.channel!r}: group {group.name!r} is already connected as "
                f"{known[0]}; give every receiver of a group the same options"
            )
        for bus in self._receiving_buses():
            bus.join(self, group)  # raises first if the signal keeps no history
        receivers = known[1] if known else _ReplayChoices()
        self._groups[group.name] = (group, receivers)
        receivers.connect(receiver, sender, weak)
        receivers._choose_replays(receiver, replays)
        return receiver

    def connect_via(
        self,
        sender: t.Any,
        weak: bool = False,
        *,
        replays: bool = True,
        group: Group | str | None = None,
    ) -> c.Callable[[F], F]:
        """As blinker, with :meth:`connect`'s ``replays`` and ``group``."""

        def decorator(receiver: F) -> F:
            self.connect(receiver, sender, weak, replays=replays, group=group)
            return receiver

        return decorator

    @contextlib.contextmanager
    def connected_to(
        self,
        receiver: c.Callable[..., t.Any],
        sender: t.Any = blinker.ANY,
        *,
        replays: bool = True,
        group: Group | str | None = None,
    ) -> c.Generator[None, None, None]:
        """As blinker, with :meth:`connect`'s ``replays`` and ``group``."""
        self.connect(receiver, sender, weak=False, replays=replays, group=group)
        try:
            yield None
        finally:
            self.disconnect(receiver)

    def disconnect(self, receiver: c.Callable[..., t.Any], sender: t.Any = blinker.ANY) -> None:
        """As blinker; also disconnects ``receiver`` from every group it is in."""
        for _, receivers in self._groups.values():
            receivers.disconnect(receiver, sender)
        super().disconnect(receiver, sender)

    def dead_letters(self, group: str) -> c.Iterator[DeadLetter]:
        """The events ``group`` gave up on, oldest first, with the error and attempts."""
        return self._bus_or_raise().dead_letters(self, group)

    def requeue(self, group: str, ids: c.Collection[str] | None = None) -> int:
        """Give dead letters (``ids``, default all) to ``group`` again, to that group
        alone; returns how many. Each gets a fresh set of attempts."""
        return self._bus_or_raise().requeue(self, group, ids)

    def group_status(self) -> list[GroupStatus]:
        """Every group reading this signal, from any process: its members, what they
        hold unacknowledged, how far behind it is, and its dead letters."""
        return self._bus_or_raise().group_status(self)

    def groups(self) -> list[Group]:
        """The groups this signal has receivers in, in this process."""
        return [group for group, receivers in self._groups.values() if receivers.receivers]

    def has_group_receivers(self, name: str) -> bool:
        known = self._groups.get(name)
        return known is not None and bool(known[1].receivers)

    def group_receivers_for(
        self, name: str, sender: t.Any, *, replayed: bool = False
    ) -> c.Iterator[c.Callable[..., t.Any]]:
        """The receivers of group ``name`` that take events of ``sender`` (and, for a
        ``replayed`` event, take replays)."""
        known = self._groups.get(name)
        if known is None:
            return iter(())
        receivers = known[1]
        return (
            receiver
            for receiver in receivers.receivers_for(sender)
            if not replayed or receivers.takes_replays(receiver)
        )

    def _disconnect(self, receiver_id: c.Hashable, sender_id: c.Hashable) -> None:
        super()._disconnect(receiver_id, sender_id)
        if not self.receivers:
            for bus in self._receiving_buses():
                bus.release(self)

    def send(
        self,
        sender: t.Any | None = None,
        /,
        *,
        _async_wrapper: c.Callable[
            [c.Callable[..., c.Coroutine[t.Any, t.Any, t.Any]]], c.Callable[..., t.Any]
        ]
        | None = None,
        **kwargs: t.Any,
    ) -> list[tuple[c.Callable[..., t.Any], t.Any]]:
        if self.schema is not None:
            kwargs = validated(self.schema, self.channel, kwargs)
        # self.bus, without a call on the hot path when there is one default bus
        bus = self._bus or (
            bus_module._default if bus_module._chooser is None else bus_module.default_bus()
        )
        if bus is None:
            return super().send(sender, _async_wrapper=_async_wrapper, **kwargs)
        if self.is_muted:
            return []
        event = bus.publish(self, sender, kwargs)
        if not self.receivers:
            return []
        token = _current.set(event)
        try:
            return super().send(sender, _async_wrapper=_async_wrapper, **kwargs)
        finally:
            _current.reset(token)

    async def send_async(
        self,
        sender: t.Any | None = None,
        /,
        *,
        _sync_wrapper: c.Callable[
            [c.Callable[..., t.Any]], c.Callable[..., c.Coroutine[t.Any, t.Any, t.Any]]
        ]
        | None = None,
        **kwargs: t.Any,
    ) -> list[tuple[c.Callable[..., t.Any], t.Any]]:
        if self.schema is not None:
            kwargs = validated(self.schema, self.channel, kwargs)
        bus = self.bus
        if bus is None:
            return await super().send_async(sender, _sync_wrapper=_sync_wrapper, **kwargs)
        if self.is_muted:
            return []
        # Waiting for room in the queue, or for Redis in synchronous mode, happens in a
        # worker thread: the event loop never blocks on Redis.
        event = bus.publish(self, sender, kwargs, wait=False)
        if event is None:
            event = await asyncio.to_thread(bus.publish, self, sender, kwargs)
        token = _current.set(event)
        try:
            return await super().send_async(sender, _sync_wrapper=_sync_wrapper, **kwargs)
        finally:
            _current.reset(token)


class Namespace(blinker.Namespace):
    """A blinker ``Namespace`` whose signals travel between processes.

    ``name`` prefixes the channel of every signal it makes; ``None`` takes the
    defining module's ``__name__``, so ``Namespace()`` in ``myapp/auth.py`` makes
    channels like ``myapp.auth.logged-in``. ``bus`` binds its signals to one bus;
    by default they use the default bus, once ``configure()`` has made one.
    ``history`` sets the retention of its signals, unless a signal says otherwise.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        bus: bus_module.Bus | None = None,
        history: HistoryOption = None,
    ) -> None:
        super().__init__()
        self.name = name if name is not None else _caller_module(1)
        self.bus = bus
        self.history = history

    def signal(self, name: str, doc: str | None = None, **options: t.Any) -> Signal:
        """The signal called ``name``, made on first use (as blinker).

        ``history=`` (a :class:`~signalbus.History`, ``True`` or ``False``) overrides
        the namespace's and the bus's retention for this signal; ``schema=`` (a pydantic
        model) checks and types its arguments (see :mod:`signalbus.schema`).
        """
        history = options.pop("history", None)
        schema = options.pop("schema", None)
        _check_options(name, options)
        try:
            existing = self[name]
        except KeyError:
            if history is None:
                history = self.history
            created = Signal(
                name, doc, namespace=self.name, bus=self.bus, history=history, schema=schema
            )
            return t.cast(Signal, self.setdefault(name, created))
        return t.cast(Signal, existing)


default_namespace = Namespace("")
"""blinker's module-level namespace: its signals' channels are their names alone."""


def signal(name: str, doc: str | None = None) -> Signal:
    """The signal called ``name`` (made on first use), as ``blinker.signal``: the same
    signal for the same name, whose channel is the name itself, so that
    ``signal("auth.logged-in")`` and ``Namespace("auth").signal("logged-in")`` are one
    signal between processes."""
    return default_namespace.signal(name, doc)
