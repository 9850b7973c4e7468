"""``Bus``: one per process, wiring signals to the codec, the publisher and the subscriber.

It also keeps the process-wide default bus that ``configure()`` makes, and makes
every bus fork-safe: a child process gets its own connections, threads and identity,
keeps the receivers it inherited, and does not publish what its parent had queued.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import blinker
import redis

from .catalog import CatalogWriter, Definition, definition
from .codec import Codec
from .errors import ConfigurationError, PublishError
from .event import Event
from .groups import (
    DeadLetter,
    Group,
    GroupConsumer,
    GroupStatus,
    Handler,
    Membership,
    Streams,
    check_group,
    dead_letters,
    requeue,
)
from .groups import status as group_status
from .history import HistoryOption, Keep, TimeBound, keep_for, resolve
from .history import read as read_history
from .keyspace import channel_key, dead_letter_key, epoch_key, retry_key
from .publisher import QUEUE_FULL_POLICIES, Publisher, QueueFullPolicy
from .receiver_context import of_sender
from .recovery import Recovery
from .replay import ReplayReport, replay, to_group, to_subscribers
from .signing import Signer
from .stats import Stats, ThrottledLog, logger
from .subscriber import Dispatcher, Subscriber
from .transport import (
    PublishConnection,
    ServerCheck,
    SubscribeConnection,
    client_from_url,
    command_client,
    iterate_with_transport_errors,
    redacted,
    transport_errors,
)
from .wire import SIGNED_OFFSET, TOKEN_SIZE, event_id, head, seal

if TYPE_CHECKING:
    from .bridge import BridgedSignal
    from .signals import Signal

__all__ = ["Bus", "configure", "default_bus"]

DEFAULT_URL = "redis://localhost:6379/0"


class Bus:
    """The connection manager of one process: publisher, subscriber, codec, registries.

    ``url`` defaults to ``$SIGNALBUS_URL``, else ``redis://localhost:6379/0``; or pass a
    ready ``client`` (a ``redis.Redis``, or a fakeredis one in tests) whose settings the
    bus opens its own connections with. Options:

    - ``prefix``: put before every channel name, to separate environments or tests.
    - ``synchronous``: ``send()`` returns only once Redis has the event, and raises
      :class:`~signalbus.PublishError` (before any receiver runs) if it cannot.
    - ``queue_size``, ``queue_full`` (``"drop"``, ``"block"`` or ``"raise"``) and
      ``block_timeout``: the bounded publish queue and its policy (see
      :mod:`signalbus.publisher`).
    - ``max_message_size``: the largest encoded event, in bytes, sent or accepted.
    - ``subscribe_timeout``: how long ``connect()`` waits for the server to confirm.
    - ``dispatch_backlog``: events read but not yet dispatched before reading pauses.
    - ``close_timeout``: how long ``close()`` (and interpreter exit) waits to flush.
    - ``history``: how long signals keep their events (:class:`~signalbus.History`,
      ``True`` for its defaults, ``False`` for none); a namespace or a signal may say
      otherwise.
    - ``receiver_context``: makes the context manager that receivers of events from
      other processes, and group receivers, run inside: called with no argument
      (``app.app_context``), or with the event's sender if it takes exactly one (the
      Flask extension picks the app the event was sent as).
    - ``signing_keys``: sign every event with the first key, accept events signed with
      any: a list of keys, or one key (a ``str`` or ``bytes``, commas and all), each of at
      least 16 bytes (default ``$SIGNALBUS_SIGNING_KEYS``, comma-separated; see
      :mod:`signalbus.signing`).
    - ``catalog``: record the signals this bus carries in the catalog, for
      ``signalbus ls`` (see :mod:`signalbus.catalog`).

    Threads start on first use. A bus is a context manager; ``close()`` flushes.

    A :class:`~signalbus.Signal` drives its bus through public methods, which an
    integration (a bridge, say) may use too: ``define`` (the catalog), ``watch`` and
    ``release`` (subscriptions), ``join`` (groups), ``publish``, and what a signal's
    ``history``, ``replay``, ``dead_letters``, ``requeue`` and ``group_status`` do.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = "",
        synchronous: bool = False,
        queue_size: int = 10_000,
        queue_full: QueueFullPolicy = "drop",
        block_timeout: float = 1.0,
        max_message_size: int = 1 << 20,
        subscribe_timeout: float = 5.0,
        dispatch_backlog: int = 10_000,
        close_timeout: float = 5.0,
        history: HistoryOption = True,
        receiver_context: Callable[..., AbstractContextManager[object]] | None = None,
        signing_keys: str | bytes | Sequence[str | bytes] | None = None,
        catalog: bool = True,
    ) -> None:
        if queue_full not in QUEUE_FULL_POLICIES:
            raise ConfigurationError(
                f"queue_full must be one of {QUEUE_FULL_POLICIES}, not {queue_full!r}"
            )
        for option, value in (
            ("queue_size", queue_size),
            ("max_message_size", max_message_size),
            ("dispatch_backlog", dispatch_backlog),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{option} must be a positive int, not {value!r}")
        seconds: tuple[tuple[str, object], ...] = (
            ("block_timeout", block_timeout),
            ("subscribe_timeout", subscribe_timeout),
            ("close_timeout", close_timeout),
        )
        for option, timeout in seconds:
            if not _is_seconds(timeout):
                raise ConfigurationError(
                    f"{option} must be a number of seconds (0 or more), not {timeout!r}"
                )
        for option, flag in (("synchronous", synchronous), ("catalog", catalog)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"{option} must be True or False, not {flag!r}")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {prefix!r}")
        if client is not None:
            _check_client(client)
        self.url = url_or_default(url or _url_of(client))
        self._owns_client = client is None  # close() closes what the bus made, only
        if client is None:
            client = client_from_url(self.url)
        self.client = client
        self.prefix = prefix
        resolve(history)  # a bad option fails here, not at the first send
        self.history = history
        self.subscribe_timeout = subscribe_timeout
        self.close_timeout = close_timeout
        signer = Signer.from_environment() if signing_keys is None else Signer(signing_keys)
        self.codec = Codec(max_message_size=max_message_size, signer=signer)
        self._publisher_options: dict[str, Any] = dict(
            synchronous=synchronous,
            queue_size=queue_size,
            queue_full=queue_full,
            block_timeout=block_timeout,
        )
        self._dispatch_backlog = dispatch_backlog
        self._receiver_context = of_sender(receiver_context)
        self._signs = self.codec.signer.signs
        self._records_catalog = catalog
        # Signals with receivers, by channel key; replaced, never mutated, so the reader
        # and dispatcher threads read it without a lock, and a copy taken at any moment
        # (a fork's) can be walked while the map changes.
        self._signals: dict[bytes, tuple[Signal, ...]] = {}
        # Signals with group receivers: group -> stream key -> signals; replaced, not mutated.
        self._membership = Membership(prefix, self._receiver_context)
        self._keys: dict[str, bytes] = {}
        self._bridges: list[BridgedSignal] = []
        self._closed = False
        self._server = ServerCheck(self.url)  # a refusal holds in forked children too
        self._start_process_life()
        _live_buses.add(self)

    def _start_process_life(self) -> None:
        """Everything that belongs to one process: identity, counters, threads, sockets."""
        self._lock = threading.Lock()
        self._bridging = threading.Lock()
        self._token = os.urandom(TOKEN_SIZE)
        self._token_hex = self._token.hex()
        self._head = head(self._token)
        self.origin = f"{socket.gethostname()}:{os.getpid()}"
        self._seq = itertools.count(1)
        self._stats = Stats()
        log = self._log = ThrottledLog()
        self._publisher = Publisher(
            PublishConnection(
                self.client, self._server, epoch_key(self.prefix), self._trim_warning
            ),
            stats=self._stats,
            log=log,
            **self._publisher_options,
        )
        stopping = self._stopping = threading.Event()
        # History, replay, groups, recovery and the catalog: never through self.client
        # (see _check_client).
        self._commands = command_client(self.client, self._server)
        self._catalog = CatalogWriter(self._commands, self.prefix, self._describe)
        self._membership.start_process_life(self._token, self._group_consumer)
        recovery = Recovery(
            self._commands,
            self.codec,
            self._stream_for,
            self._token,
            prefix=self.prefix,
            gap_sender=self,
            stats=self._stats,
            log=log,
            stopping=stopping,
        )
        dispatcher = Dispatcher(
            self.codec,
            self._signals_for,
            recovery,
            self._token,
            stats=self._stats,
            log=log,
            context=self._receiver_context,
        )
        self._subscriber = Subscriber(
            SubscribeConnection(self.client, self._server, epoch_key(self.prefix)),
            dispatcher,
            self._is_wanted,
            self._token,
            envelope_offset=SIGNED_OFFSET if self._signs else 0,
            stats=self._stats,
            log=log,
            backlog=self._dispatch_backlog,
            stopping=stopping,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<signalbus.Bus {redacted(self.url)!r} prefix={self.prefix!r} {state}>"

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- registries --------------------------------------------------------------

    def register_sender(self, obj: Any, name: str) -> None:
        """Let ``obj`` be a sender: it travels as ``name`` and arrives as the object
        the receiving process registered under ``name`` (or as ``name`` itself).

        A name registered again stands for the newest object (a new app per test, say),
        while every registered object still alive travels under its name. Senders are
        held weakly where Python allows: a collected one is forgotten.
        """
        self.codec.register_sender(obj, name)

    def unregister_sender(self, obj: Any) -> None:
        """Forget ``obj`` as a sender: sending with it raises again, and events named
        as it arrive as the name (unless another object took the name since)."""
        self.codec.unregister_sender(obj)

    def register_type(
        self,
        cls: type,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
        name: str | None = None,
    ) -> None:
        """Let instances of ``cls`` travel as ``encode(obj)``, revived with ``decode``.

        ``name`` (default ``module.QualName``) identifies the type on the wire; the
        receiving process must register the same name to revive it.
        """
        self.codec.register_type(cls, encode, decode, name)

    # -- the catalog -------------------------------------------------------------

    def define(self, signals: Iterable[Signal]) -> None:
        """Record ``signals`` in the catalog (in the background), if this bus keeps it."""
        if self._records_catalog and not self._closed:
            self._catalog.record(signals)

    def _describe(self, signal: Signal) -> Definition:
        return definition(signal, resolve(signal.history_option, self.history), self.origin)

    # -- sending -----------------------------------------------------------------

    def publish(
        self, signal: Signal, sender: Any, kwargs: dict[str, Any], *, wait: bool = True
    ) -> Event | None:
        """Encode and hand to the publisher; the Event local receivers will see.

        Waits at most ``block_timeout``; with ``wait=False`` never, and returns None
        instead of waiting (for room in the queue, or in synchronous mode, for Redis).
        """
        if self._closed:
            raise ConfigurationError(
                f"signal {signal.channel!r}: its bus is closed; make a new Bus or call "
                "signalbus.configure() again"
            )
        self._check_server(f"signal {signal.channel!r}")
        channel = signal.channel
        route = signal._route
        if route is None or route[0] is not self:
            route = signal._route = (self, self._key(channel), self._keep_for(signal))
        publisher = self._publisher
        if publisher.synchronous and not wait:
            return None
        timestamp = time.time()
        # Encoded before numbering: what the codec runs (a registered type's encode, a
        # model's serializers) may take time, or send events itself, and must do so
        # without holding up, or deadlocking on, the lock below.
        body = self.codec.encode_body(channel, sender, kwargs, timestamp, self.origin)
        confirmation = None
        deadline = time.monotonic() + publisher.block_timeout  # send() waits no longer
        while True:
            # Numbered and placed in one step: the bus publishes in the order of its
            # numbers, which is how receivers tell a second copy (see signalbus.recovery).
            with publisher.ordered:
                seq = next(self._seq)
                data = seal(self._head, seq, body)
                if self._signs:
                    data = self.codec.signer.sign(data)
                outgoing = (route[1], data, route[2])
                if publisher.synchronous:
                    confirmation = publisher.confirmation(outgoing)
                if publisher.place(outgoing, timestamp, confirmation):
                    break
            # The queue is full: wait for room without holding up other senders, then
            # number the event again (a number left unused is no gap to receivers).
            if not wait:
                return None
            if not publisher.wait_for_room(channel, deadline):
                break  # dropped, and counted
        if confirmation is not None:
            try:
                publisher.confirm(confirmation, channel, deadline)
            except PublishError:
                self._check_server(f"signal {channel!r}")  # refused as a cluster node: say so
                raise
        return Event(event_id(self._token_hex, seq), channel, self.origin, timestamp, False)

    def _keep_for(self, signal: Signal) -> Keep | None:
        return keep_for(self.prefix, signal.channel, resolve(signal.history_option, self.history))

    def _kept(self, signal: Signal) -> Keep:
        keep = self._keep_for(signal)
        if keep is None:
            raise ConfigurationError(
                f"signal {signal.channel!r} keeps no history (history=False); nothing to read"
            )
        return keep

    def _stream_for(self, key: bytes) -> tuple[str, bytes] | None:
        """The channel on ``key`` and its history stream, if its signals keep history."""
        signals = self._signals.get(key)
        if not signals:
            return None
        keep = self._keep_for(signals[0])
        return None if keep is None else (signals[0].channel, keep.stream_key)

    def read_history(
        self, signal: Signal, since: TimeBound, until: TimeBound, limit: int | None
    ) -> Iterator[Event]:
        """What :meth:`Signal.history` reads, on this bus."""
        events = read_history(
            self._commands,
            self.codec,
            signal,
            self._kept(signal).stream_key,
            since=since,
            until=until,
            limit=limit,
            own_token=self._token,
        )
        return iterate_with_transport_errors(
            events, f"signal {signal.channel!r}: reading its history failed"
        )

    def replay(
        self,
        signal: Signal,
        since: TimeBound,
        until: TimeBound,
        *,
        limit: int | None,
        dry_run: bool,
        rate: float | None,
        progress: Callable[[Event], object] | None,
        group: str | None,
    ) -> ReplayReport:
        """What :meth:`Signal.replay` does, on this bus."""
        if group is None:
            write = to_subscribers(self._key(signal.channel))
        else:
            check_group(self.group_status(signal), signal.channel, group, "nothing was replayed")
            write = to_group(retry_key(self.prefix, signal.channel, group))
        return replay(
            self._commands,
            self.codec,
            signal,
            write=write,
            stream_key=self._kept(signal).stream_key,
            own_token=self._token,
            since=since,
            until=until,
            limit=limit,
            dry_run=dry_run,
            rate=rate,
            progress=progress,
        )

    def _key(self, channel: str) -> bytes:
        key = self._keys.get(channel)
        if key is None:
            key = self._keys.setdefault(channel, channel_key(self.prefix, channel))
        return key

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far is on the server (or ``timeout``).

        Returns False if the timeout passed first, or if Redis refused an event queued
        since the previous flush (or it was given up: see :mod:`signalbus.publisher`).
        Raises :class:`ConfigurationError` if the server is one signalbus does not
        support (a Redis Cluster node).
        """
        self._check_server("flush()")
        flushed = self._publisher.flush(timeout)
        self._check_server("flush()")
        return flushed

    def _check_server(self, what: str) -> None:
        """Raise :class:`ConfigurationError` for ``what`` if the server was refused."""
        if self._server.refusal is not None:
            raise ConfigurationError(f"{what}: {self._server.refusal}")

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``, default ``close_timeout``) and stop the threads.

        Events still unpublished after that are logged and counted as dropped.
        Closing the default bus makes signals local-only until ``configure()``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        for bridged in self._bridges:
            bridged.close()
        self._publisher.close(_left(deadline))
        self._catalog.close(_left(deadline))
        self.stop_receiving(_left(deadline))
        self._server.close()
        self._commands.close()
        if self._owns_client:
            self.client.close()
        _remove_default(self)
        _live_buses.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counters of what this bus did in this process (see :class:`signalbus.stats.Stats`)."""
        return self._stats.snapshot()

    def count(self, counter: str, amount: int = 1) -> None:
        """Add to one of :meth:`stats`' counters what an integration did on this bus's
        behalf (a bridge counts the library's sends it could not publish)."""
        self._stats.add(counter, amount)

    # -- receiving ---------------------------------------------------------------

    def watch(self, signals: Iterable[Signal]) -> None:
        """Subscribe to the channels of ``signals``, which have receivers now."""
        if self._closed:
            return
        keys = []
        with self._lock:
            watched = dict(self._signals)
            for signal in signals:
                key = self._key(signal.channel)
                known = watched.get(key, ())
                if signal not in known:
                    watched[key] = (*known, signal)
                keys.append(key)
            self._signals = watched
        if keys and not self._subscriber.subscribe(keys, self.subscribe_timeout):
            self._check_server(", ".join(f"signal {signal.channel!r}" for signal in signals))
            self._log.warning(
                "unconfirmed",
                "subscription to %s not confirmed (Redis unreachable, or silent for up to "
                "%.1fs); receivers will get remote events once Redis answers",
                ", ".join(k.decode(errors="replace") for k in keys),
                self.subscribe_timeout,
            )

    def release(self, signal: Signal) -> None:
        """Note that ``signal`` may have lost its last receiver (safe during garbage
        collection: see :meth:`signalbus.subscriber.Subscriber.release`)."""
        self._subscriber.release(self._key(signal.channel))

    def _signals_for(self, key: bytes) -> tuple[Signal, ...]:
        return self._signals.get(key, ())

    def _is_wanted(self, key: bytes) -> bool:
        """Whether a signal on ``key`` has receivers; forgets the signals that have none."""
        with self._lock:
            listening = tuple(signal for signal in self._signals.get(key, ()) if signal.receivers)
            if listening != self._signals.get(key, ()):
                watched = dict(self._signals)
                if listening:
                    watched[key] = listening
                else:
                    del watched[key]
                self._signals = watched
            return bool(listening)

    # -- bridges -------------------------------------------------------------------

    def bridge(self, signal: blinker.Signal, channel: str | None = None) -> Signal:
        """Carry an existing blinker ``signal`` (a library's, say) between processes.

        Its sends in this process are published; events sent in other processes reach
        its receivers here. ``channel`` defaults to ``module.attribute`` of the module
        that defines it (see :func:`signalbus.bridge.default_channel`). Returns the
        bus's side of it: its ``channel``, ``history()`` and ``replay()``. Bridging a
        signal again returns the same bridge (nothing is delivered twice).
        """
        from .bridge import BridgedSignal, default_channel
        from .signals import Signal

        if isinstance(signal, Signal):
            raise ConfigurationError(f"{signal!r} is a signalbus signal already: no bridge needed")
        if not isinstance(signal, blinker.Signal):
            raise ConfigurationError(
                f"bridge() takes a blinker signal (flask_login.user_logged_in, say), not {signal!r}"
            )
        if self._closed:
            raise ConfigurationError("this bus is closed; make a new Bus to bridge signals")
        with self._bridging:  # one bridge per signal, whatever threads ask at once
            known = next((b for b in self._bridges if b.original is signal), None)
            if known is None:
                known = BridgedSignal(signal, channel or default_channel(signal), self)
                self._bridges.append(known)  # subscribed already: it connected a receiver
            elif channel is not None and channel != known.channel:
                raise ConfigurationError(
                    f"{signal!r} is bridged on channel {known.channel!r} already; a second "
                    f"channel ({channel!r}) would deliver its events twice"
                )
            return known

    # -- groups --------------------------------------------------------------------

    def _trim_warning(self, warning: str) -> None:
        """History trimming had to drop events a group still needed, or failed: an
        error, counted every time, logged at most every few seconds per stream (it
        comes back with every batch until the group catches up)."""
        self._stats.add("trim_warnings")
        stream = warning.partition(": ")[0]
        self._log.error(f"trim:{stream}", "signalbus: history trimming: %s", warning)

    def join(self, signal: Signal, group: Group) -> None:
        """Let this process handle ``group``'s share of ``signal``'s events."""
        stream = self._kept(signal).stream_key  # raises if the signal keeps no history
        if not self._closed:
            self._membership.join(signal, group, stream, self.subscribe_timeout)

    def _group_consumer(
        self, group: Group, streams: Callable[[], Streams], handle: Handler
    ) -> GroupConsumer:
        """A group's consumer on this process's connections."""
        return GroupConsumer(
            self._commands,
            self.codec,
            group,
            f"{self.origin}:{self._token_hex}",
            streams,
            handle,
            gap_sender=self,
            stats=self._stats,
            log=self._log,
            stopping=self._stopping,
        )

    def dead_letters(self, signal: Signal, group: str) -> Iterator[DeadLetter]:
        """What :meth:`Signal.dead_letters` reads, on this bus."""
        dead = dead_letter_key(self.prefix, signal.channel, group)
        return iterate_with_transport_errors(
            dead_letters(self._commands, self.codec, signal.channel, dead, self._token),
            f"signal {signal.channel!r}: reading the dead letters of {group!r} failed",
        )

    def group_status(self, signal: Signal) -> list[GroupStatus]:
        """What :meth:`Signal.group_status` reads, on this bus."""
        stream = self._kept(signal).stream_key
        with transport_errors(f"signal {signal.channel!r}: reading its groups failed"):
            return group_status(self._commands, self.prefix, signal.channel, stream)

    def requeue(self, signal: Signal, group: str, ids: Collection[str] | None) -> int:
        """What :meth:`Signal.requeue` does, on this bus."""
        dead = dead_letter_key(self.prefix, signal.channel, group)
        retry = retry_key(self.prefix, signal.channel, group)
        with transport_errors(f"signal {signal.channel!r}: requeueing for {group!r} failed"):
            return requeue(self._commands, dead, retry, ids)

    def stop_receiving(self, timeout: float = 1.0) -> None:
        """Stop receiving in this process (a server's master, which forked the workers
        that receive); it can still send. Waits up to ``timeout`` for the threads."""
        deadline = time.monotonic() + timeout
        self._subscriber.close(timeout)
        self._membership.join_consumers(deadline)

    def _after_fork_in_child(self) -> None:
        """Start this process's life: its own threads and sockets, subscribed to the
        channels whose signals still have receivers (the parent may not have noticed
        one lost its last receiver yet, or, a server's master, stopped looking)."""
        self._start_process_life()
        wanted = [key for key in self._signals if self._is_wanted(key)]
        if wanted and not self._closed:
            self._subscriber.subscribe(wanted, timeout=0)
        if not self._closed:
            self._membership.start()


def url_or_default(url: str | None) -> str:
    """The URL a bus given ``url`` connects to: it, else ``$SIGNALBUS_URL``, else
    :data:`DEFAULT_URL`."""
    return url or os.environ.get("SIGNALBUS_URL") or DEFAULT_URL


def _is_seconds(value: object) -> bool:
    """Whether ``value`` is a finite number of seconds, 0 or more (a bool is not one)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _left(deadline: float) -> float:
    """Seconds from now to ``deadline`` (a ``time.monotonic()``), at least 0."""
    return max(0.0, deadline - time.monotonic())


def _check_client(client: object) -> None:
    """Refuse a client the bus cannot take its connection settings from.

    The bus sends nothing through the client itself: it opens its own connections with
    the client's settings, in RESP2 with bytes replies, so ``decode_responses`` and the
    protocol do not matter. That takes a synchronous ``redis.Redis`` (fakeredis's
    included) on a plain connection pool.
    """
    if isinstance(client, redis.RedisCluster):
        raise ConfigurationError(
            "client= is a redis.RedisCluster: signalbus does not support Redis Cluster yet; "
            "pass the url= or a redis.Redis of a single (non-cluster) server"
        )
    if not isinstance(client, redis.Redis):
        raise ConfigurationError(
            "client= must be a redis.Redis (a synchronous one: the bus runs threads), not "
            f"{type(client).__module__}.{type(client).__qualname__}; or pass url= instead"
        )
    if isinstance(client.connection_pool, redis.SentinelConnectionPool):
        raise ConfigurationError(
            "client= is a Sentinel client (master_for): signalbus does not support Sentinel "
            "yet; pass the url= or a redis.Redis of the current master"
        )


def _url_of(client: redis.Redis | None) -> str | None:
    """Where a ready client points, for reprs and messages."""
    if client is None:
        return None
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


# -- the default buses -----------------------------------------------------------------

# Signals of a Namespace without a bus travel on a default bus. There is usually one,
# made by configure(); the Flask extension makes one per app setting (URL and prefix),
# and a chooser picks the current app's. Every default bus receives for those signals.
_default: Bus | None = None  # the newest default bus: the one outside any chooser's say
_defaults: tuple[Bus, ...] = ()
_chooser: Callable[[], Bus | None] | None = None
# Buses are closed, and made defaults, from any thread: the two tuples change together.
_defaults_lock = threading.Lock()
_unbound: weakref.WeakSet[Signal] = weakref.WeakSet()
_live_buses: weakref.WeakSet[Bus] = weakref.WeakSet()


def default_bus() -> Bus | None:
    """The bus a signal without one of its own travels on here and now: the chooser's
    (the current Flask app's), else the newest made by :func:`configure`, else None."""
    if _chooser is not None:
        chosen = _chooser()
        if chosen is not None and not chosen.closed:
            return chosen
    return _default


def default_buses() -> tuple[Bus, ...]:
    """Every default bus: each receives the events of signals without a bus of their own."""
    return _defaults


def set_chooser(chooser: Callable[[], Bus | None] | None) -> None:
    """Let ``chooser`` pick the default bus of the moment among several (None: the newest)."""
    global _chooser
    _chooser = chooser


def add_default(bus: Bus) -> None:
    """Make ``bus`` the newest default bus, leaving the others as they are.

    Signals without a bus of their own are recorded in its catalog, and their receivers
    and groups start getting its events now.
    """
    global _default, _defaults
    if bus.closed:
        raise ConfigurationError(f"{bus!r} is closed; it cannot be a default bus")
    with _defaults_lock:
        known = bus in _defaults
        _defaults = (*(other for other in _defaults if other is not bus), bus)
        _default = bus
    if known:
        return
    unbound = list(_unbound)
    bus.define(unbound)
    bus.watch([signal for signal in unbound if signal.receivers])
    for signal in unbound:
        for group in signal.groups():
            bus.join(signal, group)


def _remove_default(bus: Bus) -> None:
    global _default, _defaults
    with _defaults_lock:
        _defaults = tuple(other for other in _defaults if other is not bus)
        _default = _defaults[-1] if _defaults else None


def track_unbound(signal: Signal) -> None:
    """Remember a signal that uses the default buses, to subscribe it on each, and
    record it in their catalogs."""
    _unbound.add(signal)
    for bus in _defaults:
        bus.define([signal])


def configure(url: str | None = None, **options: Any) -> Bus:
    """Make the process-wide default bus; signals without a bus of their own use it.

    Receivers connected before this call start getting remote events now. Calling it
    again closes the previous default bus and replaces it.
    """
    bus = Bus(url, **options)
    previous = _default
    add_default(bus)
    if previous is not None:
        previous.close()
    return bus


def _after_fork_in_child() -> None:
    global _defaults_lock
    _defaults_lock = threading.Lock()  # another thread may have held it at the fork
    for bus in list(_live_buses):
        guarded(bus._after_fork_in_child, "its receivers get no events from other processes")


def guarded(fork_handling: Callable[[], None], consequence: str) -> None:
    """Run one bus's ``fork_handling``; a failure is logged, never raised.

    Python only prints what an at-fork hook raises, as "Exception ignored", and stops
    there: the other buses of the process would be left unhandled, and the failure
    unseen by the process's logging.
    """
    try:
        fork_handling()
    except Exception:
        logger.exception(
            "signalbus: handling a fork failed in process %d (%s): %s",
            os.getpid(),
            getattr(fork_handling, "__self__", fork_handling),
            consequence,
        )


def _close_all_at_exit() -> None:
    for bus in list(_live_buses):
        bus.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
