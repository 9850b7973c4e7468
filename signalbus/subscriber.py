"""The receiving side: a reader thread on the socket, a dispatcher thread for receivers.

The reader only reads: it keeps the connection subscribed to the wanted channels
(resubscribing after any reconnect), skips the bus's own events (delivered locally
already), pings a quiet connection to find out whether it is dead, and hands each
message to the dispatcher through a bounded handoff. When receivers fall behind and
the handoff is full, the reader waits, Redis buffers, and if Redis's output-buffer
limit cuts the connection the reader notices, logs, counts and reconnects. The
dispatcher decodes each message and runs the receivers; a receiver that raises is
logged and counted and the others still run. Neither thread ever dies of an error:
both log, back off and go on until the bus stops them.

After a reconnect, the reader passes the dispatcher a catch-up marker per channel,
in order with the messages, and the dispatcher first delivers what the channel's
history holds that it missed (see :mod:`signalbus.recovery`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from . import event as event_module
from .codec import Codec, Envelope
from .errors import (
    ConfigurationError,
    DecodingError,
    SubscribeError,
    TransportError,
    ValidationError,
)
from .handoff import Handoff
from .recovery import Recovery, Subscribed
from .schema import validated
from .stats import Stats, ThrottledLog
from .transport import Backoff, Refusal, SubscribeConnection
from .wire import ENVELOPE_TAIL, REPLAY_HEAD

if TYPE_CHECKING:
    from .signals import Signal

__all__ = ["Dispatcher", "Subscriber", "call"]

logger = logging.getLogger("signalbus")

_POLL = 0.25

CATCH_UP = None
"""In place of a message: the channel was subscribed again after a reconnect."""

Message: TypeAlias = bytes | Subscribed | None
"""What the reader hands the dispatcher: a message's bytes, or a marker."""


class Subscriber:
    """Owns the subscriber connection and the reader and dispatcher threads."""

    def __init__(
        self,
        connection: SubscribeConnection,
        dispatch: Callable[[bytes, Message], None],
        is_wanted: Callable[[bytes], bool],
        own_token: bytes,
        *,
        envelope_offset: int = 0,
        stats: Stats,
        log: ThrottledLog,
        backlog: int,
        stopping: threading.Event,
        keepalive: float = 15.0,
    ) -> None:
        self._conn = connection
        self._dispatch = dispatch
        self._own_tail = ENVELOPE_TAIL + own_token  # after the array's size: 8 or 9
        self._envelope_at = envelope_offset  # after a signature, on a signing bus
        self._is_wanted = is_wanted
        self._stats = stats
        self._log = log
        self._keepalive = keepalive
        self._handoff: Handoff[tuple[bytes, Message]] = Handoff(backlog)
        self._lock = threading.Lock()  # never held across I/O
        self._wanted: set[bytes] = set()
        self._confirmed: set[bytes] = set()
        self._confirmed_once: set[bytes] = set()  # wanted, and subscribed at least once
        self._pending: dict[bytes, threading.Event] = {}
        self._refused: dict[bytes, str] = {}  # channel -> why Redis refused to subscribe
        self._late: dict[bytes, float] = {}  # channel -> when connect() stopped waiting
        self._unanswered = False  # a wait for confirmation failed; nothing heard since
        self._released: deque[bytes] = deque()
        self._to_subscribe: deque[bytes] = deque()  # for the reader to write
        self._stopping = stopping
        self._threads: list[threading.Thread] = []
        self._heard = False
        self._quiet_since = time.monotonic()
        self._ping_sent: float | None = None

    # -- called from any thread --------------------------------------------------

    def subscribe(self, channels: Collection[bytes], timeout: float) -> bool:
        """Subscribe, and wait up to ``timeout`` for the server to confirm.

        Returns whether every channel is confirmed. Channels stay wanted either way:
        the reader subscribes them whenever it (re)connects, and events sent after
        this call gave up waiting are caught up from history once it has; but a
        channel Redis refuses (an ACL without it) is dropped, and raises
        :class:`SubscribeError`. No I/O is waited on here, and once a wait has gone
        unanswered the next calls do not wait until the server is heard again.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            for channel in channels:
                self._refused.pop(channel, None)
            new = [channel for channel in channels if channel not in self._wanted]
            self._wanted.update(new)
            waits = [
                self._pending.setdefault(channel, threading.Event())
                for channel in channels
                if channel not in self._confirmed
            ]
            unanswered = self._unanswered
        # Written here if the socket is free, else by the reader; unconnected, the
        # reader subscribes when it connects, so a forked child does no I/O here.
        if new and not self._conn.write(b"SUBSCRIBE", lambda: new, blocking=False):
            self._to_subscribe.extend(new)
        self.start()
        if not unanswered and not self._stopping.is_set():  # stopped: no reader will answer
            for confirmation in waits:
                confirmation.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            refused = {c: self._refused.pop(c) for c in channels if c in self._refused}
            late = [c for c in channels if c in self._wanted and c not in self._confirmed]
            now = time.monotonic()
            for channel in late:
                self._late.setdefault(channel, now)
            self._unanswered = self._unanswered or bool(late)
        if refused:
            raise SubscribeError(
                "Redis refused to subscribe to "
                + "; ".join(f"{c.decode(errors='replace')!r} ({why})" for c, why in refused.items())
                + ": the Redis user's ACL must allow the channel (e.g. &auth.*); "
                "its receivers get no events from other processes"
            )
        return not late

    def release(self, channel: bytes) -> None:
        """Note that ``channel`` may have lost its last receiver.

        No I/O and no lock, so this is safe from a weakref callback during garbage
        collection; the reader unsubscribes if the channel is indeed unwanted.
        """
        self._released.append(channel)

    def start(self) -> None:
        with self._lock:
            if self._threads or self._stopping.is_set():
                return
            self._threads = [
                threading.Thread(target=target, name=name, daemon=True)
                for target, name in (
                    (self._read_forever, "signalbus-reader"),
                    (self._dispatch_forever, "signalbus-dispatcher"),
                )
            ]
            for thread in self._threads:
                thread.start()

    def close(self, timeout: float) -> None:
        """Stop both threads, waiting up to ``timeout``; the reader closes its own socket."""
        with self._lock:
            self._stopping.set()
            threads = self._threads
        self._handoff.wake()
        if threads:
            self._conn.interrupt()
        else:
            self._conn.close()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the reader thread ---------------------------------------------------------

    def _read_forever(self) -> None:
        try:
            self._read_until_stopped()
        finally:
            self._conn.close()

    def _read_until_stopped(self) -> None:
        backoff = Backoff(self._stopping)
        connected_before = False
        while not self._stopping.is_set():
            try:
                if not self._conn.connected:
                    self._connect(connected_before)
                    connected_before = True
                self._read_one()
                backoff.reset()
            except TransportError as exc:
                if self._stopping.is_set():
                    break
                if self._conn.connected:  # lost: reconnect at once
                    self._conn.close()
                    self._log.warning("lost", "subscriber connection lost, reconnecting: %s", exc)
                    continue
                self._give_up_waiting()
                self._log.warning("unreachable", "cannot reach Redis to subscribe: %s", exc)
                backoff.wait()
            except ConfigurationError:  # a server the bus cannot use (logged where found)
                self._give_up_waiting()
                return
            except Exception:
                if self._stopping.is_set():
                    break
                logger.exception("signalbus reader: unexpected error; going on")
                backoff.wait()

    def _connect(self, reconnecting: bool) -> None:
        with self._lock:
            self._confirmed.clear()
            self._to_subscribe.clear()  # connecting subscribes to all that is wanted
        self._conn.connect(self._wanted_now)
        self._heard, self._ping_sent = False, None
        self._quiet_since = time.monotonic()
        if reconnecting:
            self._stats.add("reconnects")
            logger.info(
                "signalbus: reconnected, subscribing to %d channels again", len(self._wanted)
            )

    def _wanted_now(self) -> list[bytes]:
        with self._lock:
            return list(self._wanted)

    def _give_up_waiting(self) -> None:
        """Wake every ``subscribe()`` waiting for a confirmation that cannot come now."""
        with self._lock:
            for confirmation in self._pending.values():
                confirmation.set()
            self._pending.clear()

    def _read_one(self) -> None:
        reply = self._conn.read(_POLL)
        if reply is None:
            self._on_quiet()
            return
        self._heard = True
        self._unanswered = False
        if type(reply) is list and reply[0] == b"message":
            data = reply[2]
            at = self._envelope_at
            if data.startswith(self._own_tail, at + 1) and data[at] != REPLAY_HEAD:
                # our own event, delivered locally already
                self._stats.own_skipped += 1
            else:
                self._handoff.put((reply[1], data))
                if self._handoff.full():
                    self._wait_for_dispatcher()
        elif type(reply) is list and reply[0] in (b"subscribe", b"unsubscribe"):
            self._on_confirmation(reply[0], reply[1])
        elif isinstance(reply, Refusal):
            self._on_refusal(reply)
        self._write_pending()

    def _write_pending(self) -> None:
        """Unsubscribe what lost its receivers; subscribe what callers could not."""
        if self._released:
            self._unsubscribe_released()
        if self._to_subscribe:
            channels = set()
            while self._to_subscribe:
                channels.add(self._to_subscribe.popleft())
            self._conn.write(b"SUBSCRIBE", lambda: [c for c in channels if c in self._wanted])

    def _on_confirmation(self, kind: bytes, channel: bytes) -> None:
        with self._lock:
            if kind == b"unsubscribe":
                self._confirmed.discard(channel)
                return
            if channel in self._wanted:
                self._confirmed.add(channel)
                if channel in self._confirmed_once:  # again, after a reconnect
                    self._handoff.put((channel, CATCH_UP))
                else:
                    late = self._late.pop(channel, None)
                    since = time.monotonic() if late is None else late
                    marker = Subscribed(since, self._conn.epoch, late is not None)
                    self._handoff.put((channel, marker))
                    self._confirmed_once.add(channel)
            confirmation = self._pending.pop(channel, None)
        if confirmation is not None:
            confirmation.set()

    def _on_refusal(self, refusal: Refusal) -> None:
        """A SUBSCRIBE refused (the user's ACL) drops its channel, and tells who waits."""
        if refusal.command == b"EVAL":  # the data epoch, read before subscribing
            self._log.warning(
                "epoch-refused",
                "Redis refused the bus's data epoch key (its ACL?): %s; a restart that loses "
                "Redis's data is then told only by the positions in history streams",
                refusal.error,
            )
            return
        if refusal.command != b"SUBSCRIBE" or refusal.channel is None:
            self._log.warning("refused", "Redis refused a subscriber command: %s", refusal.error)
            return
        channel = refusal.channel
        with self._lock:
            self._wanted.discard(channel)
            self._confirmed_once.discard(channel)
            self._late.pop(channel, None)
            self._refused[channel] = refusal.error
            confirmation = self._pending.pop(channel, None)
        self._stats.add("subscribe_refused")
        name = channel.decode(errors="replace")
        self._log.warning(
            f"refused:{name}", "Redis refused to subscribe to %r: %s", name, refusal.error
        )
        if confirmation is not None:
            confirmation.set()

    def _wait_for_dispatcher(self) -> None:
        self._stats.add("dispatch_backlog_waits")
        self._log.warning(
            "backlog",
            "receivers are slower than incoming events (%d waiting); reading paused",
            len(self._handoff),
        )
        while not self._handoff.wait_for_space(_POLL):
            if self._stopping.is_set():
                return

    def _on_quiet(self) -> None:
        """Between messages: (un)subscribe what is pending, ping a silent server."""
        self._write_pending()
        now = time.monotonic()
        if self._heard:
            self._heard, self._ping_sent, self._quiet_since = False, None, now
        elif self._ping_sent is not None:
            if now - self._ping_sent > self._keepalive:
                raise TransportError("no reply to PING")
        elif now - self._quiet_since > self._keepalive:
            self._conn.ping()
            self._ping_sent = now

    def _unsubscribe_released(self) -> None:
        candidates = set()
        while self._released:
            candidates.add(self._released.popleft())

        def unwanted() -> list[bytes]:
            # Decided under the write lock: a caller's SUBSCRIBE cannot come between.
            with self._lock:
                found = [c for c in candidates if c in self._wanted and not self._is_wanted(c)]
                self._wanted.difference_update(found)
                self._confirmed.difference_update(found)
                self._confirmed_once.difference_update(found)
                for channel in found:
                    self._late.pop(channel, None)
                return found

        self._conn.write(b"UNSUBSCRIBE", unwanted)

    # -- the dispatcher thread -----------------------------------------------------

    def _dispatch_forever(self) -> None:
        while True:
            batch = self._handoff.take(256, _POLL)
            if not batch and self._stopping.is_set():
                return
            for channel, data in batch:
                try:
                    self._dispatch(channel, data)
                except Exception:
                    logger.exception("signalbus dispatcher: unexpected error; going on")


def call(receiver: Callable[..., Any], sender: Any, kwargs: dict[str, Any]) -> None:
    """Run ``receiver`` for an event from elsewhere; a coroutine receiver is run to the end."""
    result = receiver(sender, **kwargs)
    if inspect.iscoroutine(result):
        asyncio.run(result)


class Dispatcher:
    """Turns a message into receiver calls, for one bus."""

    def __init__(
        self,
        codec: Codec,
        signals_for: Callable[[bytes], Sequence[Signal]],
        recovery: Recovery,
        token: bytes,
        *,
        stats: Stats,
        log: ThrottledLog,
        context: Callable[[Any], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._codec = codec
        self._signals_for = signals_for
        self._recovery = recovery
        self._token = token
        self._context = context
        self._stats = stats
        self._log = log

    def __call__(self, channel_key: bytes, data: Message) -> None:
        if type(data) is not bytes:
            recovered = (
                self._recovery.catch_up(channel_key)
                if data is CATCH_UP
                else self._recovery.subscribed(channel_key, cast(Subscribed, data))
            )
            for envelope in recovered:
                self._deliver(channel_key, envelope)
            return
        self._stats.received += 1
        try:
            envelope = self._codec.decode(data)
        except DecodingError as exc:
            self._skip(channel_key, str(exc))
            return
        self._deliver(channel_key, envelope)

    def _deliver(self, channel_key: bytes, envelope: Envelope) -> None:
        candidates = self._signals_for(channel_key)
        if not candidates:  # its last receiver went a moment ago
            return
        signals = [s for s in candidates if s.channel == envelope.channel]
        if not signals:
            self._skip(channel_key, f"the event names channel {envelope.channel!r}")
            return
        if not envelope.replayed:
            try:
                if self._recovery.is_repeat(channel_key, envelope):
                    self._stats.add("duplicates")
                    return
            except DecodingError as exc:
                self._skip(channel_key, str(exc))
                return
        # Made only if a receiver asks (see signalbus.event).
        token = event_module._current.set(functools.partial(envelope.event, self._token))
        try:
            if self._context is None:
                self._run_signals(signals, envelope)
            else:
                with self._context(envelope.sender):
                    self._run_signals(signals, envelope)
        finally:
            event_module._current.reset(token)

    def _run_signals(self, signals: Sequence[Signal], envelope: Envelope) -> None:
        for signal in signals:
            self._run_receivers(signal, envelope)

    def _skip(self, channel_key: bytes, why: str) -> None:
        self._stats.add("invalid")
        self._log.warning(
            "invalid",
            "skipped a message on channel %r: %s",
            channel_key.decode(errors="replace"),
            why,
        )

    def _run_receivers(self, signal: Signal, envelope: Envelope) -> None:
        if signal.is_muted:
            return
        sender, kwargs = envelope.sender, envelope.kwargs
        if signal.schema is not None:
            try:
                kwargs = validated(signal.schema, signal.channel, kwargs)
            except ValidationError as exc:  # an older or newer sender, or a forger
                self._stats.add("invalid")
                self._log.warning(
                    f"schema:{signal.channel}", "event %s not delivered: %s", envelope.id, exc
                )
                return
        for receiver in signal.receivers_for(sender):
            if envelope.replayed and not signal.takes_replays(receiver):
                continue
            try:
                call(receiver, sender, kwargs)
            except Exception:
                self._stats.add("receiver_errors")
                self._log.warning(
                    f"receiver-error:{signal.channel}",
                    "receiver %r of signal %r raised on event %s",
                    receiver,
                    signal.channel,
                    envelope.id,
                    exc_info=True,
                )
