"""Redis, seen through the two dedicated connections a bus holds.

The publisher connection writes many PUBLISH commands in one write and then reads
their replies: a pipeline without redis-py's per-command overhead. The subscriber
connection is read by one thread only; other threads may write SUBSCRIBE and
UNSUBSCRIBE to it under a lock, and the reader sees the server's confirmations.
Both speak RESP2, where pub/sub messages are plain replies.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import random
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.driver_info import DriverInfo
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import __version__
from .errors import ConfigurationError, TransportError
from .history import EPOCH_SCRIPT, PUBLISH_SCRIPT, PUBLISH_SCRIPT_SHA, Keep
from .stats import logger
from .wire import script_arguments

__all__ = [
    "NETWORK_ERRORS",
    "Backoff",
    "PublishConnection",
    "Refusal",
    "ServerCheck",
    "SubscribeConnection",
    "client_from_url",
    "command_client",
    "iterate_with_transport_errors",
    "redacted",
    "transport_errors",
]

T = TypeVar("T")

NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a connection raises when Redis is away or silent."""


class Backoff:
    """Doubling waits between tries against a failing Redis, cut short by ``stopping``.

    Each wait is drawn from the upper half of the current delay: the processes that lost
    Redis together (every worker, when it restarts) do not all come back at once.
    """

    def __init__(self, stopping: threading.Event, first: float = 0.05, limit: float = 2.0) -> None:
        self._stopping = stopping
        self._first = self._delay = first
        self._limit = limit

    def wait(self) -> bool:
        """Wait the next delay; True if the bus is stopping."""
        return self._stopping.wait(self.next_delay())

    def next_delay(self) -> float:
        """Seconds of the next wait, between half the current delay and all of it; the
        delay then doubles, up to ``limit``."""
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self._limit)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits the first delay again."""
        self._delay = self._first


@contextlib.contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Raise what Redis raises in the block as :class:`TransportError`, saying ``what``
    was being done: callers of the public API catch one tree of errors."""
    try:
        yield
    except RedisError as exc:
        raise TransportError(f"{what}: {exc}") from exc


def iterate_with_transport_errors(items: Iterator[T], what: str) -> Iterator[T]:
    """``items``, read under :func:`transport_errors`."""
    with transport_errors(what):
        yield from items


def redacted(url: str) -> str:
    """``url`` without its password, for messages and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


DRIVER = DriverInfo(lib_version=redis.__version__).add_upstream_driver("signalbus", __version__)
"""How a connection of signalbus names itself to the server (``CLIENT LIST`` shows
``lib-name=redis-py(signalbus_v...)``). Given, it also spares redis-py reading its own
version from the package metadata for every connection it makes (0.5 ms each)."""


def client_from_url(url: str, **defaults: Any) -> redis.Redis:
    """A client for ``url`` (``defaults`` for what it does not set), its options checked.

    redis-py hands an option it does not know on to the connection class, which raises
    a ``TypeError`` only when the first connection is made; here a malformed URL, an
    option no connection takes (with the closest name suggested) and a bad value are a
    :class:`ConfigurationError` at once. No connection is made.
    """
    try:
        client = redis.Redis.from_url(url, **{"protocol": 2, "driver_info": DRIVER, **defaults})
    except ValueError as exc:
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss", "unix"):  # a bad value
            raise _bad_url(url, str(exc).rstrip(".")) from None
        hint = "; expected e.g. redis://localhost:6379/0"
        if scheme.startswith("redis+"):
            hint = "; Sentinel and Cluster are not supported yet: give the URL of one server"
        raise _bad_url(url, str(exc).rstrip(".") + hint) from None
    pool = client.connection_pool
    known = _keywords(pool.connection_class)
    for option in pool.connection_kwargs:
        if option not in known:
            raise _bad_url(url, _unknown(option, known))
    try:  # the values: a connection object checks them without connecting
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, RedisError) as exc:
        raise _bad_url(url, str(exc)) from None
    return client


def _bad_url(url: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"bad Redis URL {redacted(url)!r}: {problem}")


def _unknown(option: str, known: Collection[str]) -> str:
    """What to say of an ``option`` that is not one of ``known``."""
    said = f"unknown option {option!r}"
    if option in _keywords(redis.SSLConnection):
        return f"{said}: it is for rediss:// URLs (TLS) only"
    close = difflib.get_close_matches(option, known, n=1)
    return f"{said}; did you mean {close[0]!r}?" if close else f"{said} (see redis-py's Connection)"


@functools.cache
def _keywords(connection_class: type) -> frozenset[str]:
    """The keyword arguments ``connection_class`` takes, as its constructors declare
    them: each ``__init__`` up its classes, for as long as one passes ``**kwargs`` on."""
    names: set[str] = set()
    for cls in connection_class.__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]  # after self
        names.update(p.name for p in parameters if p.kind in _NAMED)
        if all(p.kind is not p.VAR_KEYWORD for p in parameters):
            break
    return frozenset(names)


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


# A server that stops answering (paused, or a network that drops packets) must turn
# into an error the bus can act on, not a read that waits forever.
DEFAULT_SOCKET_TIMEOUT = 10.0


CLUSTER_ERRORS = (MovedError, AskError, ClusterDownError, ClusterCrossSlotError, TryAgainError)
"""Replies only a Redis Cluster node gives."""


class ServerCheck:
    """Refuses a server signalbus does not support yet: a Redis Cluster node.

    A node takes PUBLISH, but refuses the history script for every key another node
    holds (MOVED): events would be lost, counted only as dropped. So each new connection
    of a bus asks ``INFO cluster`` once connected (as redis-py's ``redis_connect_func``:
    one round trip per connection, none per event), and a cluster-only reply to a
    publish tells as well where an ACL forbids INFO. The constructor connects to
    nothing, so a bus can be made while Redis is down; the first connection finds out.
    From then on every connection of the bus, and every call that needs one, raises
    :class:`ConfigurationError`; it is logged once.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self.refusal: str | None = None
        self._closed = False

    def close(self) -> None:
        """Refuse every new connection from now on: the bus closed. redis-py reconnects
        on its own, so a thread of the bus not yet stopped would otherwise open a
        connection that nothing closes."""
        self._closed = True

    def __call__(self, connection: Any) -> None:
        if self._closed:
            connection.disconnect()
            raise RedisConnectionError("the bus is closed")
        connection.on_connect()
        if self.refusal is None:
            connection.send_command("INFO", "cluster")
            try:
                info = connection.read_response()
            except ResponseError:  # INFO not allowed: a cluster-only reply will tell
                info = b""
            if b"cluster_enabled:1" in info:
                self._refuse("its INFO says cluster_enabled:1")
        if self.refusal is not None:
            connection.disconnect()
            self.check()

    def check(self) -> None:
        """Raise :class:`ConfigurationError` if the server was refused."""
        if self.refusal is not None:
            raise ConfigurationError(self.refusal)

    def check_reply(self, reply: object) -> None:
        """Refuse the server if ``reply`` is one only a cluster node gives."""
        if isinstance(reply, CLUSTER_ERRORS):
            self._refuse(f"it replied with a {type(reply).__name__}: {reply}")
            self.check()

    def _refuse(self, why: str) -> None:
        with self._lock:
            if self.refusal is not None:
                return
            self.refusal = (
                f"Redis at {redacted(self._url)} is a Redis Cluster node ({why}): signalbus "
                "does not support Redis Cluster yet, and publishes nothing there; give the "
                "URL of a single Redis server"
            )
        logger.error("signalbus: %s", self.refusal)


def _connection_kwargs(client: redis.Redis, check: ServerCheck) -> dict[str, Any]:
    """The client's connection settings, in RESP2 with bytes replies (whatever the
    client's ``decode_responses``: events are bytes), with ``DEFAULT_SOCKET_TIMEOUT``
    where it has no socket timeout, and ``check`` on every new connection."""
    kwargs = dict(
        client.connection_pool.connection_kwargs,
        protocol=2,
        decode_responses=False,
        redis_connect_func=check,
    )
    kwargs.setdefault("driver_info", DRIVER)
    for resp3_only in ("maint_notifications_config", "maint_notifications_pool_handler"):
        kwargs.pop(resp3_only, None)
    if kwargs.get("socket_timeout") is None:
        kwargs["socket_timeout"] = DEFAULT_SOCKET_TIMEOUT
    return kwargs


def _dedicated_connection(client: redis.Redis, check: ServerCheck) -> Any:
    """A connection of the client's kind, outside its pool."""
    pool = client.connection_pool
    return pool.connection_class(**_connection_kwargs(client, check))


def command_client(client: redis.Redis, check: ServerCheck) -> redis.Redis:
    """A client of its own on ``client``'s server, for a bus's commands: it owns its
    pool, so closing it closes its connections (``Redis(connection_pool=...)`` would
    leave them open)."""
    pool = client.connection_pool
    return redis.Redis.from_pool(
        type(pool)(connection_class=pool.connection_class, **_connection_kwargs(client, check))
    )


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _command(*parts: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


def _bulk_parts(value: bytes) -> tuple[bytes, bytes, bytes]:
    """``value`` as a RESP bulk string, in pieces: a large value is not copied twice."""
    return b"$%d\r\n" % len(value), value, b"\r\n"


_cached_bulk = functools.lru_cache(maxsize=4096)(_bulk)
_LAYOUT = script_arguments()


@functools.lru_cache(maxsize=4096)
def _publish_head(channel: bytes) -> bytes:
    """``PUBLISH channel`` in RESP, up to the message's length."""
    return b"*3\r\n" + _bulk(b"PUBLISH") + _bulk(channel)


Outgoing = tuple[bytes, bytes, Keep | None]
"""An event to publish: its channel key, its envelope, and where it is kept, if it is."""


class PublishConnection:
    """Writes batches of events, and reads their replies later.

    Writes and reads may happen in different threads (one writer at a time, one
    reader); replies come back in the order the batches were written. A batch with
    no event to keep is a pipeline of PUBLISH; one with any goes in one EVALSHA of the
    history script, which keeps and publishes each event in order. The first such
    batch on a connection loads the script first, in the same write.
    """

    def __init__(
        self,
        client: redis.Redis,
        check: ServerCheck,
        epoch_key: bytes,
        on_trim_warning: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._conn = _dedicated_connection(client, check)
        self.check = check
        self._epoch = (epoch_key, os.urandom(8).hex().encode())  # its key, and a value
        self._on_trim_warning = on_trim_warning  # trimming dropped what a group needs, or failed
        self._script_loaded = False
        self._loads: deque[bool] = deque()  # per write, in order: did it load the script?
        # After a failure, nothing more is written until close(): redis-py would connect
        # again by itself, and a write on a new connection while replies of the old one
        # are still awaited would have them misread, and newer events overtake older.
        self._failed = False

    @property
    def ready(self) -> bool:
        """Connected, and not failed: a write now starts no connection."""
        return bool(self._conn.is_connected) and not self._failed

    def write(self, events: Sequence[Outgoing]) -> None:
        """Write ``events`` in one system call."""
        loads = False
        if any(keep is not None for _, _, keep in events):
            loads = not (self._script_loaded and self._conn.is_connected)
            buffer = self._script_call(events)
            if loads:
                buffer = _command(b"SCRIPT", b"LOAD", PUBLISH_SCRIPT) + buffer
        else:
            parts: list[bytes] = []
            for channel, data, _ in events:
                parts += (_publish_head(channel), *_bulk_parts(data))
            buffer = b"".join(parts)
        if self._failed:
            raise TransportError("the connection failed; it must be closed and started again")
        try:
            self._conn.send_packed_command([buffer], check_health=False)
        except NETWORK_ERRORS as exc:
            self._failed = True
            raise TransportError(f"publishing to Redis failed: {exc}") from exc
        self._script_loaded |= loads
        self._loads.append(loads)

    def _script_call(self, events: Sequence[Outgoing]) -> bytes:
        """One EVALSHA of the history script for ``events`` (see its argument layout)."""
        streams: dict[bytes, int] = {}
        retention: list[bytes] = []
        per_event: list[bytes] = []
        for channel, data, keep in events:
            index = 0
            if keep is not None:
                index = streams.setdefault(keep.stream_key, len(streams) + 1)
                if index > len(retention) // 2:
                    retention += (keep.max_count, keep.max_age_arg)
            per_event += (_cached_bulk(b"%d" % index), _cached_bulk(channel), *_bulk_parts(data))
        head = [
            b"EVALSHA",
            PUBLISH_SCRIPT_SHA,
            b"%d" % len(streams),
            *streams,
            *_LAYOUT,
            *self._epoch,
            *retention,
        ]
        size = len(head) + 3 * len(events)
        return b"".join([b"*%d\r\n" % size, *map(_bulk, head), *per_event])

    def read_replies(self, events: Sequence[Outgoing]) -> list[Exception | None]:
        """The replies to ``events``, written earlier: ``None`` per event, or the error
        Redis answered with (an ACL refusal, say).

        Raises :class:`TransportError` when the connection fails, after which it is
        unknown which of the written events reached the server.
        """
        if not events:  # nothing was written for them
            return []
        try:
            loaded = self._loads.popleft()
            if not any(keep is not None for _, _, keep in events):
                return [self._error_or_none(self._read_reply()) for _ in events]
            load_reply = self._read_reply() if loaded else None
            reply = self._read_reply()
        except NETWORK_ERRORS as exc:
            self._failed = True
            raise TransportError(f"publishing to Redis failed: {exc}") from exc
        if isinstance(load_reply, Exception):
            # Refused (an ACL without SCRIPT, say): the EVALSHA after it then finds no
            # script, which is not a flushed cache to start again for. Try loading
            # again with the next batch.
            self._script_loaded = False
            return [load_reply] * len(events)
        if isinstance(reply, NoScriptError):
            # The server's script cache was flushed: start again on a fresh connection.
            raise TransportError(f"the history script is gone from the server: {reply}")
        if isinstance(reply, Exception):  # the script as a whole was refused
            return [reply] * len(events)
        results, warnings = reply
        for warning in warnings:
            self._on_trim_warning(warning.decode(errors="replace"))
        return [self._error_or_none(result) for result in results]

    def _read_reply(self) -> Any:
        try:
            return self._conn.read_response(disconnect_on_error=False)
        except ResponseError as exc:
            self.check.check_reply(exc)
            return exc

    @staticmethod
    def _error_or_none(reply: Any) -> Exception | None:
        return reply if isinstance(reply, Exception) else None

    def close(self) -> None:
        self._conn.disconnect()
        self._script_loaded = False
        self._loads.clear()
        self._failed = False


class Refusal(NamedTuple):
    """An error reply to a command of the subscriber connection, and what it refused."""

    command: bytes
    channel: bytes | None
    error: str


class SubscribeConnection:
    """The subscriber side: one reading thread, any number of writing threads.

    It knows which command each reply answers (the server answers in order: one reply
    per channel of SUBSCRIBE and UNSUBSCRIBE, one per PING), so an error reply is
    returned as a :class:`Refusal` naming its command and channel. SUBSCRIBE goes
    out as one command per channel: a channel the user's ACL does not allow is
    refused alone, and the others are subscribed.
    """

    def __init__(self, client: redis.Redis, check: ServerCheck, epoch_key: bytes) -> None:
        self._conn = _dedicated_connection(client, check)
        self._epoch_key = epoch_key
        self._write_lock = threading.Lock()
        self._owed: deque[tuple[bytes, bytes | None]] = deque()  # replies still to come
        self.epoch: bytes | None = None
        """The server's data epoch (see :func:`signalbus.history.epoch_key`) when this
        connection was made, before it subscribed; None if not read (yet), or refused."""

    @property
    def connected(self) -> bool:
        return bool(self._conn.is_connected)

    def connect(self, channels: Callable[[], Iterable[bytes]]) -> None:
        """(Re)connect and subscribe to ``channels()``, asked once connected (so that a
        channel wanted meanwhile is in); raises :class:`TransportError`."""
        with self._write_lock:
            self._conn.disconnect()
            self._owed.clear()
            self.epoch = None
            try:
                self._conn.connect()
                # What the data was when the subscriptions began, made if need be.
                self._owed.append((b"EVAL", None))
                self._conn.send_packed_command(
                    self._conn.pack_command(
                        b"EVAL", EPOCH_SCRIPT.encode(), b"1", self._epoch_key, os.urandom(8).hex()
                    ),
                    check_health=False,
                )
                self._write_unlocked(b"SUBSCRIBE", channels())
            except (*NETWORK_ERRORS, RedisError) as exc:
                self._conn.disconnect()
                raise TransportError(f"cannot subscribe: {exc}") from exc

    def write(
        self, command: bytes, channels: Callable[[], Iterable[bytes]], *, blocking: bool = True
    ) -> bool:
        """Send ``command`` for ``channels()`` (asked under the write lock) if connected;
        the reader gets the reply.

        Returns False when not connected, or with ``blocking=False`` when another
        thread is writing: the reader subscribes to what is wanted when it connects. A
        failed write is left for the reader to notice.
        """
        if not self._write_lock.acquire(blocking=blocking):
            return False
        try:
            if not self._conn.is_connected:
                return False
            try:
                self._write_unlocked(command, channels())
            except NETWORK_ERRORS:
                return False
            return True
        finally:
            self._write_lock.release()

    def _write_unlocked(self, command: bytes, args: Iterable[bytes]) -> None:
        args = list(args)
        owed: list[tuple[bytes, bytes | None]]
        commands: list[tuple[bytes, ...]]
        if command == b"PING":
            commands, owed = [(command,)], [(command, None)]
        elif not args:
            return
        else:
            # SUBSCRIBE one channel per command, so that a refusal names its channel.
            split = command == b"SUBSCRIBE"
            commands = [(command, c) for c in args] if split else [(command, *args)]
            owed = [(command, channel) for channel in args]  # one reply per channel
        self._owed.extend(owed)  # first: the reply may be read before the write returns
        self._conn.send_packed_command(self._conn.pack_commands(commands), check_health=False)

    def ping(self) -> bool:
        return self.write(b"PING", tuple)

    def read(self, timeout: float) -> Any:
        """The next reply, or None after ``timeout`` seconds without one.

        An error reply (a subscription the server refused) is returned as a
        :class:`Refusal`, not raised.
        """
        if not self._conn.is_connected:
            raise TransportError("subscriber connection is not connected")
        try:
            if not self._conn.can_read(timeout=timeout):
                return None
            reply = self._conn.read_response(disconnect_on_error=False)
        except ResponseError as exc:
            command, channel = self._answered()
            return Refusal(command, channel, str(exc))
        except (*NETWORK_ERRORS, RedisError) as exc:
            raise TransportError(f"subscriber connection lost: {exc}") from exc
        if type(reply) is not list or reply[0] != b"message":
            command, _ = self._answered()
            if command == b"EVAL":
                self.epoch = reply
        return reply

    def interrupt(self) -> None:
        """Wake the reader waiting in :meth:`read` now: its socket reads the end at once.

        redis-py offers no way to: shutting down the connection's socket (its ``_sock``,
        the one place signalbus reaches in for it) is safe from another thread, where
        ``disconnect()`` is not. Without it, a reader notices within its poll.
        """
        sock = getattr(self._conn, "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _answered(self) -> tuple[bytes, bytes | None]:
        """The command (and channel) the reply just read answers."""
        return self._owed.popleft() if self._owed else (b"?", None)

    def close(self) -> None:
        with self._write_lock:
            self._conn.disconnect()
