"""Gap recovery: across a reconnect, no event lost and none delivered twice.

A subscribing bus keeps, per channel, its position in the channel's history stream:
the last event it dispatched, and an anchor, where the stream ended (its last entry
id and how many entries had ever been added to it) when the bus last caught up.
After a reconnect the reader subscribes again and tells the dispatcher, in order
with the messages; the dispatcher then reads what the stream holds after its
position and dispatches that, before the live events that follow.

Positions are checked against the stream, never taken on a message's word: the entry
id a message carries is appended by the server outside any signature, so the last
event dispatched counts as a position only if the stream holds that very event
(its sender and number) under that id. Otherwise delivery resumes from the anchor,
and what was dispatched already is dropped as a second copy. An event is a second
copy when its sender's number is not higher than the last one dispatched from that
sender on that channel: a bus publishes in the order of its numbers (see
:mod:`signalbus.publisher`), and a channel's history holds them in that order too.

Events may be missing when the stream no longer holds everything added after the
position: it was trimmed past it, entries after it were deleted, or Redis lost its
data (a restart without persistence, a flush: a key of the bus's own, the epoch,
tells). That gap is logged, counted and sent as :data:`history_gap`, never passed
over in silence, whether or not the bus had received anything on the channel yet.

A ``connect()`` that returned before Redis confirmed the subscription (Redis was
away) is caught up too: once subscribed, the channel's events from the moment
``connect()`` gave up waiting are delivered from history.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import blinker
import redis

from .codec import Codec, Envelope
from .errors import DecodingError
from .history import EPOCH_SCRIPT, decoded, entries, epoch_made
from .keyspace import epoch_key
from .stats import Stats, ThrottledLog
from .transport import NETWORK_ERRORS, Backoff

__all__ = ["Recovery", "Subscribed", "history_gap"]

history_gap = blinker.NamedSignal(
    "signalbus.history-gap",
    doc="""Sent, in the process concerned, when events of a channel may have been lost.

    The sender is the bus; keyword arguments: ``channel``, ``last_seen`` (the entry id
    the process had reached, now gone from the stream) and ``first_kept`` (the oldest
    entry id the stream still holds, where delivery resumed, or ``None``); and, when
    the events were a group's, not yet handled by it, ``group`` (its name).
    """,
)


def report_gap(
    sender: Any,
    stats: Stats,
    log: ThrottledLog,
    counter: str,
    channel: str,
    last_seen: str,
    first_kept: str | None,
    why: str,
    **extra: Any,
) -> None:
    """Log, count (``counter``) and send as :data:`history_gap` that events of
    ``channel`` after ``last_seen`` may be lost, because ``why``; ``extra`` (a group)
    says whose they were. A gap receiver that raises is logged, never raised into the
    loop that found the gap."""
    stats.add(counter)
    whose = "".join(f" to {name} {value!r}" for name, value in extra.items())
    log.warning(
        f"{counter}:{channel}{whose}",
        "events on %r may be lost%s: entry %s was reached and %s; delivery resumes at %s",
        channel,
        whose,
        last_seen,
        why,
        first_kept or "the next event",
    )
    try:
        history_gap.send(
            sender, channel=channel, last_seen=last_seen, first_kept=first_kept, **extra
        )
    except Exception:
        log.warning("gap-receiver", "a history_gap receiver raised", exc_info=True)


StreamId = tuple[int, int]

MAX_SENDERS = 4096
"""Sending buses remembered per channel; past that, the half seen longest ago is forgotten."""


class Subscribed(NamedTuple):
    """In place of a message: the channel was subscribed, for the first time.

    ``since`` is the ``time.monotonic()`` from which its events are this process's:
    when Redis confirmed the subscription, or earlier, when ``connect()`` gave up
    waiting for that (``late``). ``epoch`` is the server's data epoch as the
    subscribing connection found it (None: unknown).
    """

    since: float
    epoch: bytes | None
    late: bool


def parse_id(text: str | bytes) -> StreamId:
    """A stream entry id as a pair of ints, which compare as ids do."""
    if isinstance(text, bytes):
        text = text.decode()
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def format_id(position: StreamId) -> str:
    return f"{position[0]}-{position[1]}"


class _Anchor(NamedTuple):
    """Where a stream ended when this process last caught up."""

    last_id: StreamId
    added: int | None
    """Entries ever added to it then (None: Redis before 7.0 does not tell)."""
    epoch: bytes | None
    """The server's data epoch then (see :func:`signalbus.history.epoch_key`)."""
    run_id: str | None = None
    """The server process then (None: INFO refused)."""


@dataclasses.dataclass
class _Position:
    """One channel's place in its stream, in this process."""

    anchor: _Anchor
    last: Envelope | None = None
    """The last kept event dispatched: its stream id, sender and number."""
    floor: StreamId | None = None
    """Where its events began, by the server's clock, until the first catch-up: what
    came between that and the anchor arrived live, unless the connection dropped."""


class _Server(NamedTuple):
    """The server process, and whether it keeps an append-only file."""

    run_id: str | None
    aof: bool

    @classmethod
    def of(cls, about: Any, persistence: Any) -> _Server:
        if isinstance(about, Exception) or isinstance(persistence, Exception):
            return cls(None, True)  # INFO refused (an ACL): nothing to tell
        run_id = about.get("run_id")
        return cls(None if run_id is None else str(run_id), bool(persistence.get("aof_enabled")))

    def restored_since(self, anchor: _Anchor) -> bool:
        """Whether the server restarted since ``anchor`` and, its data kept (the same
        epoch), loaded it from a snapshot: what was written after that is gone."""
        return (
            anchor.run_id is not None
            and self.run_id is not None
            and self.run_id != anchor.run_id
            and not self.aof
        )


class _Stream(NamedTuple):
    """What XINFO STREAM says of a stream now (an absent one is empty)."""

    last_id: StreamId
    added: int | None
    length: int
    first_id: StreamId | None
    max_deleted: StreamId

    @property
    def removed(self) -> bool:
        """Whether entries were ever taken out of it (trimmed or deleted)."""
        return self.added is not None and self.added > self.length

    @classmethod
    def of(cls, info: Any) -> _Stream:
        if info is None:
            return cls((0, 0), 0, 0, None, (0, 0))
        first = info.get("first-entry")
        added = info.get("entries-added")
        return cls(
            parse_id(info["last-generated-id"]),
            None if added is None else int(added),
            int(info["length"]),
            parse_id(first[0]) if first else None,
            parse_id(info.get("max-deleted-entry-id", b"0-0")),
        )


class Recovery:
    """Positions per channel, duplicate detection, and catching up after a reconnect.

    ``stream_for(channel_key)`` names the channel and its stream, or is ``None`` when
    this process keeps no history for it. Everything runs in the dispatcher thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        codec: Codec,
        stream_for: Callable[[bytes], tuple[str, bytes] | None],
        own_token: bytes,
        *,
        prefix: str,
        gap_sender: Any,
        stats: Stats,
        log: ThrottledLog,
        stopping: threading.Event,
    ) -> None:
        self._client = client
        self._codec = codec
        self._stream_for = stream_for
        self._own_token = own_token
        self._epoch_key = epoch_key(prefix)
        self._gap_sender = gap_sender
        self._stats = stats
        self._log = log
        self._stopping = stopping
        self._positions: dict[bytes, _Position] = {}
        self._last_seq: dict[bytes, dict[bytes, int]] = {}  # per channel, per sending bus

    def is_repeat(self, channel_key: bytes, envelope: Envelope) -> bool:
        """Whether ``envelope`` was dispatched already; else note that it is now.

        Per channel and sending bus, an event is new only if its number is higher
        than the last one dispatched (see the module's doc): a look-up and a move to
        the end (the senders seen longest ago are forgotten first), on every event's path.
        """
        senders = self._last_seq.get(channel_key)
        if senders is None:
            senders = self._last_seq[channel_key] = {}
        token, seq = envelope.token, envelope.seq
        last = senders.pop(token, 0)
        if seq <= last:
            senders[token] = last
            return True
        senders[token] = seq
        if len(senders) > MAX_SENDERS:
            for old in list(senders)[: MAX_SENDERS // 2]:
                del senders[old]
        if envelope.stream_id is not None:
            position = self._positions.get(channel_key)
            if position is not None:
                position.last = envelope
        return False

    def subscribed(self, channel_key: bytes, subscribed: Subscribed) -> Iterator[Envelope]:
        """The channel was just subscribed: note where its stream ends, and the events
        kept since ``subscribed.since``, which the subscription may not have seen."""
        return self._retrying(
            channel_key,
            lambda channel, stream: self._start(channel_key, channel, stream, subscribed),
        )

    def catch_up(self, channel_key: bytes) -> Iterator[Envelope]:
        """The events of ``channel_key`` kept after this process's position, oldest first."""
        return self._retrying(
            channel_key, lambda channel, stream: self._resume(channel_key, channel, stream)
        )

    def _retrying(
        self, channel_key: bytes, read: Callable[[str, bytes], Iterator[Envelope]]
    ) -> Iterator[Envelope]:
        """``read(channel, stream)``, tried again with backoff after a network failure
        until it succeeds or the bus stops: live events wait meanwhile, as they must
        to stay in order. What was dispatched before a failure is dropped as a second
        copy when it is read again."""
        found = self._stream_for(channel_key)
        if found is None:
            return
        channel, stream = found
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            try:
                yield from read(channel, stream)
                return
            except NETWORK_ERRORS as exc:
                self._log.warning(
                    "catch-up", "cannot read the history of %r to catch up: %s", channel, exc
                )
                backoff.wait()
            except redis.ResponseError as exc:  # e.g. an ACL that forbids reading streams
                self._stats.add("gaps")
                self._log.warning(
                    f"no-recovery:{channel}",
                    "events on %r may be lost across reconnects: Redis refused to read its "
                    "history: %s",
                    channel,
                    exc,
                )
                return

    def _start(
        self, channel_key: bytes, channel: str, stream: bytes, subscribed: Subscribed
    ) -> Iterator[Envelope]:
        info, epoch, server, (seconds, microseconds) = self._state(stream, [_time])
        state = _Stream.of(info)
        position = self._positions[channel_key] = _Position(
            _Anchor(state.last_id, state.added, epoch, server.run_id)
        )
        # The server's clock at ``since``, to the millisecond, never later: what was
        # sent after connect() returned must not be missed (an event kept in that
        # millisecond but sent while connect() was under way may arrive too). After
        # connect() gave up waiting, from the millisecond before.
        now = seconds * 1000 + microseconds // 1000
        elapsed = math.ceil(1000 * (time.monotonic() - subscribed.since))
        if subscribed.late:
            start = (now - elapsed - 1, 0)
        else:
            start = position.floor = (now - elapsed, 0)
        if subscribed.epoch is not None and epoch is not None and epoch != subscribed.epoch:
            self._gap(channel, format_id(start), state.first_id, _LOST_DATA)
        elif subscribed.late:
            if _made_after(epoch, start, state):
                self._gap(channel, format_id(start), state.first_id, _LOST_DATA)
            elif _trimmed_past(state, start):
                self._gap(channel, format_id(start), state.first_id, _NOT_BACK_TO_SUBSCRIBING)
            yield from self._kept(channel, stream, format_id(start))

    def _resume(self, channel_key: bytes, channel: str, stream: bytes) -> Iterator[Envelope]:
        position = self._positions.get(channel_key)
        if position is None:  # reading its history was refused when it was subscribed
            return
        last = position.last
        last_id = None if last is None else last.stream_id
        checks = last_id is not None and _parse_or_none(last_id) is not None
        info, epoch, server, *held = self._state(
            stream, [_entry(stream, last_id)] if checks else []
        )
        state = _Stream.of(info)
        same_data = None in (epoch, position.anchor.epoch) or epoch == position.anchor.epoch
        restored = same_data and server.restored_since(position.anchor)
        if restored:
            self._gap(channel, last_id or format_id(position.anchor.last_id), None, _RESTORED)
        if last is not None and checks and self._holds(held[0], last):
            yield from self._kept(channel, stream, f"({last_id}")
        elif checks and same_data and last_id == format_id(state.last_id):
            pass  # the last event added is the last one dispatched, trimmed since: a quiet signal
        else:
            anchor, floor = position.anchor, position.floor
            why = _loss(anchor, state, epoch)
            if why is None and floor is not None and _trimmed_past(state, floor):
                why = _NOT_BACK_TO_SUBSCRIBING
            if restored:  # its loss was said above
                pass
            elif why is not None:
                self._gap(channel, last_id or format_id(anchor.last_id), state.first_id, why)
            elif last_id is not None:  # not lost, not held: an id the stream never gave it
                self._stats.add("invalid")
                self._log.warning(
                    f"forged-position:{channel}",
                    "an event on %r named entry %r, which its history does not hold for it; "
                    "resuming from entry %s instead",
                    channel,
                    last_id,
                    format_id(anchor.last_id),
                )
            # After the anchor; but from the floor if the anchor was taken late (after
            # events of this process's were kept, the connection lost meanwhile).
            if floor is not None and floor <= anchor.last_id:
                after = format_id(floor)
            else:
                after = f"({format_id(anchor.last_id)}"
            yield from self._kept(channel, stream, after)
        position.anchor = _Anchor(state.last_id, state.added, epoch, server.run_id)
        position.floor = None

    def _state(self, stream: bytes, commands: list[Callable[[Any], object]]) -> list[Any]:
        """The stream's XINFO, the data epoch and the :class:`_Server`, then
        ``commands``' replies, in one round trip. A refused command raises, but XINFO
        of an absent stream is None, and a refused epoch or INFO is unknown."""
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xinfo_stream(stream)
        # Made by the first bus to ask; it disappears with the data, as a restart
        # without persistence or a flush does. Refused by an ACL: no epoch to compare.
        pipeline.eval(EPOCH_SCRIPT, 1, self._epoch_key, os.urandom(8).hex())
        pipeline.info("server")
        pipeline.info("persistence")
        for command in commands:
            command(pipeline)
        info, epoch, about, persistence, *rest = pipeline.execute(raise_on_error=False)
        if isinstance(info, redis.ResponseError) and "no such key" in str(info):
            info = None
        for reply in (info, *rest):
            if isinstance(reply, Exception):
                raise reply
        server = _Server.of(about, persistence)
        return [info, None if isinstance(epoch, Exception) else epoch, server, *rest]

    def _holds(self, found: list[tuple[bytes, dict[bytes, bytes]]], last: Envelope) -> bool:
        """Whether the entry ``found`` at ``last``'s stream id is that very event."""
        if len(found) != 1:
            return False
        try:
            kept = self._codec.decode(found[0][1].get(b"e", b""), stored=True)
        except DecodingError:
            return False
        return (kept.token, kept.seq) == (last.token, last.seq)

    def _kept(self, channel: str, stream: bytes, start: str) -> Iterator[Envelope]:
        """The events of others kept from ``start`` on (``"(" + id`` excludes it)."""
        skipped = functools.partial(self._stats.add, "invalid")
        for envelope, _ in decoded(
            self._codec, channel, entries(self._client, stream, start), skipped
        ):
            if envelope.token == self._own_token:  # delivered in this process when sent
                continue
            self._stats.add("recovered")
            yield envelope

    def _gap(self, channel: str, last_seen: str, first_kept: StreamId | None, why: str) -> None:
        kept = None if first_kept is None else format_id(first_kept)
        report_gap(self._gap_sender, self._stats, self._log, "gaps", channel, last_seen, kept, why)


_LOST_DATA = "Redis lost its data since (a restart without persistence, or a flush)"
_NOT_BACK_TO_SUBSCRIBING = "its history no longer reaches back to when this process subscribed"
_RESTORED = (
    "Redis restarted from a snapshot (RDB, no AOF): what was sent between that snapshot and "
    "the restart is gone"
)


def _made_after(epoch: bytes | None, start: StreamId, state: _Stream) -> bool:
    """Whether Redis's data began after ``start``, as far as the stream can tell: the
    epoch was made since, and the stream holds nothing older (else the epoch was only
    first asked for late, and the data is older)."""
    made = None if epoch is None else epoch_made(epoch)
    if made is None or made <= start[0]:
        return False
    return state.first_id is None or state.first_id[0] >= made


def _trimmed_past(state: _Stream, start: StreamId) -> bool:
    """Whether entries from ``start`` on may have been taken out of the stream."""
    return state.removed and (state.first_id is None or state.first_id > start)


def _time(pipeline: Any) -> object:
    return pipeline.time()


def _entry(stream: bytes, entry_id: str | None) -> Callable[[Any], object]:
    return lambda pipeline: pipeline.xrange(stream, entry_id, entry_id)


def _parse_or_none(text: str) -> StreamId | None:
    try:
        return parse_id(text)
    except ValueError:  # not an id: forged, or garbage
        return None


def _loss(anchor: _Anchor, state: _Stream, epoch: bytes | None) -> str | None:
    """Why events added after ``anchor`` may be missing from the stream now, if they may."""
    if anchor.epoch is not None and epoch is not None and epoch != anchor.epoch:
        return _LOST_DATA
    if state.first_id is not None and state.first_id <= anchor.last_id:
        # Trimming takes the oldest entries: everything after the anchor is still there,
        # but what was deleted one by one.
        if state.max_deleted > anchor.last_id:
            return "entries after it were deleted"
        return None
    if anchor.added is None or state.added is None:  # Redis before 7.0: cannot tell
        return None
    added = state.added - anchor.added
    if added < 0:
        return "its history was made anew since"
    if added > state.length:
        return "its history no longer holds every event added since"
    return None
