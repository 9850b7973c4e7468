"""Gap recovery: across a reconnect, no event lost and none delivered twice.

A subscribing bus keeps, per channel, its position in the channel's history stream:
the entry id of the last event it dispatched, or, before the first, where the stream
ended when it subscribed. After a reconnect the reader subscribes again and tells
the dispatcher, in order with the messages; the dispatcher then reads what the
stream holds after its position and dispatches that, before the live events that
follow. An event whose id it dispatched already is dropped: a live event that the
catch-up delivered, or a second copy from a publisher that retried after a failure.
When the stream no longer holds the position (trimmed, or lost in a restart without
persistence), events may be missing: that gap is logged, counted and sent as
:data:`history_gap`, never passed over in silence.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any

import blinker
import redis

from .codec import Codec, Envelope
from .errors import TransportError
from .history import decoded, entries
from .stats import Stats, ThrottledLog
from .transport import NETWORK_ERRORS, Backoff

__all__ = ["Recovery", "history_gap"]

history_gap = blinker.NamedSignal(
    "signalbus.history-gap",
    doc="""Sent, in the process concerned, when events of a channel may have been lost.

    The sender is the bus; keyword arguments: ``channel``, ``last_seen`` (the entry id
    the process had reached, now gone from the stream) and ``first_kept`` (the oldest
    entry id the stream still holds, where delivery resumed, or ``None``).
    """,
)

StreamId = tuple[int, int]
_START: StreamId = (0, 0)  # before every entry: a stream that was empty or absent
_NOWHERE: StreamId = (-1, -1)  # no position known

MAX_SENDERS = 4096
"""Sending buses remembered per channel; past that, the half seen first is forgotten."""


def parse_id(text: str) -> StreamId:
    """A stream entry id as a pair of ints, which compare as ids do."""
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _parse_or_none(text: str) -> StreamId | None:
    try:
        return parse_id(text)
    except ValueError:  # not an id: forged, or garbage
        return None


def format_id(position: StreamId) -> str:
    return f"{position[0]}-{position[1]}"


class Recovery:
    """Positions per channel, duplicate detection, and catching up after a reconnect.

    ``stream_for(channel_key)`` names the channel and its stream, or is ``None`` when
    this process keeps no history for it. ``locate`` runs in whichever thread
    subscribes; everything else in the dispatcher thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        codec: Codec,
        stream_for: Callable[[bytes], tuple[str, bytes] | None],
        own_token: bytes,
        *,
        gap_sender: Any,
        stats: Stats,
        log: ThrottledLog,
        stopping: threading.Event,
    ) -> None:
        self._client = client
        self._codec = codec
        self._stream_for = stream_for
        self._own_token = own_token
        self._gap_sender = gap_sender
        self._stats = stats
        self._log = log
        self._stopping = stopping
        self._seen: dict[bytes, str] = {}  # the stream id of the last event dispatched
        self._start: dict[bytes, StreamId] = {}  # where the stream ended on subscribing
        self._last_seq: dict[bytes, dict[bytes, int]] = {}  # per channel, per sending bus

    def locate(self, channel_keys: Collection[bytes]) -> None:
        """Note where the streams of ``channel_keys`` end now, before subscribing to them.

        Raises :class:`TransportError` if Redis cannot be reached; a channel whose
        stream Redis refuses to read is logged, and not recovered.
        """
        streams = [(key, found) for key in channel_keys if (found := self._stream_for(key))]
        if not streams:
            return
        pipeline = self._client.pipeline(transaction=False)
        for _, (_, stream) in streams:
            pipeline.xrevrange(stream, count=1)
        try:
            replies = pipeline.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise TransportError(f"cannot read where history streams end: {exc}") from exc
        for (key, (channel, _)), last in zip(streams, replies, strict=True):
            if isinstance(last, Exception):  # e.g. an ACL that forbids reading streams
                self._log.warning(f"locate:{channel}", "no gap recovery for %r: %s", channel, last)
                continue
            position = parse_id(last[0][0].decode()) if last else _START
            self._start[key] = max(position, self._start.get(key, position))

    def is_repeat(self, channel_key: bytes, envelope: Envelope) -> bool:
        """Whether ``envelope`` was dispatched already; else note that it is now.

        A bus publishes its events in the order of their sequence numbers (see
        ``Bus._publish``), and a channel's history holds them in that order too, so
        per channel and sending bus an event is new only if its number is higher than
        the last one dispatched: a dict look-up, on every event's path.
        """
        senders = self._last_seq.get(channel_key)
        if senders is None:
            senders = self._last_seq[channel_key] = {}
        token, seq = envelope.token, envelope.seq
        if seq <= senders.get(token, 0):
            return True
        senders[token] = seq
        if len(senders) > MAX_SENDERS:  # forget the senders seen first: long gone, mostly
            for old in list(senders)[: MAX_SENDERS // 2]:
                del senders[old]
        if envelope.stream_id is not None:
            self._seen[channel_key] = envelope.stream_id
        return False

    def _position(self, channel_key: bytes) -> StreamId:
        """Where to resume: the last event dispatched, else where the stream ended on
        subscribing (a forged, malformed stream id counts for nothing)."""
        seen = _parse_or_none(self._seen.get(channel_key, ""))
        return max(seen or _NOWHERE, self._start.get(channel_key, _NOWHERE))

    def catch_up(self, channel_key: bytes) -> Iterator[Envelope]:
        """The events of ``channel_key`` kept after this process's position, oldest first.

        A failure to read is retried with backoff until it succeeds or the bus stops:
        live events wait meanwhile, as they must to stay in order.
        """
        found = self._stream_for(channel_key)
        if found is None:
            return
        channel, stream = found
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            position = self._position(channel_key)
            if position == _NOWHERE:  # never located, nothing dispatched: no place to resume
                return
            try:
                yield from self._after(channel, stream, position)
                return
            except NETWORK_ERRORS as exc:
                self._log.warning(
                    "catch-up", "cannot read the history of %r to catch up: %s", channel, exc
                )
                backoff.wait()
            except redis.ResponseError as exc:  # e.g. an ACL that forbids reading streams
                self._gap(channel, position, None, f"Redis refused to read its history: {exc}")
                return

    def _after(self, channel: str, stream: bytes, position: StreamId) -> Iterator[Envelope]:
        found = entries(self._client, stream, format_id(position))
        if position != _START:
            first = next(found, None)
            if first is None or parse_id(first[0]) != position:
                reason = "its history no longer holds that entry"
                self._gap(channel, position, first and first[0], reason)
                if first is not None:
                    found = itertools.chain([first], found)
        skipped = functools.partial(self._stats.add, "invalid")
        for envelope, _ in decoded(self._codec, channel, found, skipped):
            if envelope.token == self._own_token:  # delivered in this process when sent
                continue
            self._stats.add("recovered")
            yield envelope

    def _gap(self, channel: str, last_seen: StreamId, first_kept: str | None, why: str) -> None:
        self._stats.add("gaps")
        self._log.warning(
            f"gap:{channel}",
            "events on %r may be lost: this process had reached entry %s and %s; "
            "delivery resumes at %s",
            channel,
            format_id(last_seen),
            why,
            first_kept or "the next event",
        )
        try:
            history_gap.send(
                self._gap_sender,
                channel=channel,
                last_seen=format_id(last_seen),
                first_kept=first_kept,
            )
        except Exception:
            self._log.warning("gap-receiver", "a history_gap receiver raised", exc_info=True)
