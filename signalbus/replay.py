"""Replay: publish a signal's past events again, to every process listening now.

Each kept entry is published again exactly as it was encoded, with its stream entry
id and a replay mark: receivers see ``current_event().replayed`` and the original
event id and timestamp, so they can stay idempotent, and a receiver connected with
``replays=False`` never gets them. Replays are not kept in history again, and a
receiving bus neither drops them as duplicates nor moves its position for them.
A replay into one group goes to that group's own stream instead (see
:mod:`signalbus.groups`), and only that group's receivers get it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis
from redis.client import Pipeline

from .codec import Codec, Envelope
from .errors import ArgumentError, PublishError
from .event import Event
from .history import Fields, TimeBound, check_limit, decoded, entries, entry_bound
from .wire import replayed

if TYPE_CHECKING:
    from .signals import Signal

__all__ = ["ReplayReport"]

_BATCH = 100
_EARLY = 0.005  # how far ahead of its pace a replay may publish, to batch at high rates


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """What a replay did, or on a dry run would do."""

    channel: str
    dry_run: bool
    events: int
    """Events replayed (on a dry run: that would be)."""
    skipped: int
    """Entries that were not valid events, logged and left out."""
    listeners: int
    """The most processes one replayed event reached (0 on a dry run, or into a group)."""
    first: Event | None
    last: Event | None
    seconds: float


Write = Callable[[Pipeline, Envelope, Fields], object]
"""Adds the command that replays one kept event to a pipeline."""


def to_subscribers(channel_key: bytes) -> Write:
    """Replay to every process listening: PUBLISH, with the replay mark."""
    return lambda pipeline, envelope, fields: pipeline.publish(
        channel_key, replayed(fields[b"e"], envelope.stream_id or "")
    )


def to_group(retry_stream: bytes) -> Write:
    """Replay to one group alone: into the group's own stream, marked replayed."""
    return lambda pipeline, envelope, fields: pipeline.xadd(
        retry_stream, {b"e": fields[b"e"], b"replayed": b"1"}
    )


class _Publisher:
    """Replays in pipelined batches, paced to ``rate`` events/s when one is given."""

    def __init__(self, client: redis.Redis, write: Write, rate: float | None) -> None:
        self._pipeline = client.pipeline(transaction=False)
        self._write = write
        self._interval = 1.0 / rate if rate else 0.0
        self._due = time.monotonic()
        self.published = 0
        self.listeners = 0

    def publish(self, envelope: Envelope, fields: Fields) -> None:
        if self._interval:
            wait = self._due - time.monotonic()
            if wait > _EARLY:
                self.finish()
                time.sleep(wait)
            self._due = max(self._due, time.monotonic()) + self._interval
        self._write(self._pipeline, envelope, fields)
        if len(self._pipeline) >= _BATCH:
            self.finish()

    def finish(self) -> None:
        if len(self._pipeline):
            replies = self._pipeline.execute()
            self.published += len(replies)
            # PUBLISH answers how many processes got it; XADD answers an id.
            reached = [reply for reply in replies if isinstance(reply, int)]
            self.listeners = max(self.listeners, *reached, 0)


def replay(
    client: redis.Redis,
    codec: Codec,
    signal: Signal,
    *,
    write: Write,
    stream_key: bytes,
    own_token: bytes,
    since: TimeBound,
    until: TimeBound,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    progress: Callable[[Event], object] | None,
) -> ReplayReport:
    """Replay the events of ``signal`` kept between ``since`` and ``until``."""
    channel = signal.channel
    if since is None:
        raise ArgumentError(
            f"signal {channel!r}: replay needs since=; to replay all that is kept, give since='0'"
        )
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0
    ):
        raise ArgumentError(f"signal {channel!r}: rate must be a positive number of events/s")
    check_limit(limit, channel)
    start = entry_bound(since, channel=channel, default="-")
    end = entry_bound(until, channel=channel, default="+")
    publisher = _Publisher(client, write, rate)
    counts = {"events": 0, "skipped": 0}
    first = last = None
    began = time.monotonic()

    def skip() -> None:
        counts["skipped"] += 1

    found = entries(client, stream_key, start, end, limit)
    try:
        for envelope, fields in decoded(codec, channel, found, skip):
            last = envelope.event(own_token, kept=True)
            first = first or last
            if not dry_run:
                publisher.publish(envelope, fields)
            counts["events"] += 1
            if progress is not None:
                progress(last)
        publisher.finish()
    except redis.RedisError as exc:
        if not publisher.published:
            raise PublishError(
                f"signal {channel!r}: replay failed, nothing published: {exc}"
            ) from exc
        raise PublishError(
            f"signal {channel!r}: replay stopped after {publisher.published} events, the last "
            f"read being {last.stream_id if last else '?'}: {exc}; replaying again from there "
            "delivers some events twice, under their same ids"
        ) from exc
    return ReplayReport(
        channel,
        dry_run,
        counts["events"],
        counts["skipped"],
        publisher.listeners,
        first,
        last,
        time.monotonic() - began,
    )
