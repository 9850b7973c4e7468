"""Every name signalbus gives a key or a channel in Redis: the one place to change them.

All start with the bus's ``prefix``, which keeps environments (or tests) apart on one
server:

- ``<prefix><channel>``: a signal's pub/sub channel, its name as is, so ``PUBSUB
  NUMSUB`` and ``redis-cli SUBSCRIBE`` find it;
- ``<prefix>signalbus:history:<channel>``: the stream that keeps its events;
- ``<prefix>signalbus:retry:<channel>:<group>`` and ``<prefix>signalbus:dead:...``: a
  group's events given to it again, and those it gave up on;
- ``<prefix>signalbus:epoch``: the data epoch (see :mod:`signalbus.recovery`);
- ``<prefix>signalbus:catalog``: the catalog (see :mod:`signalbus.catalog`).

A channel and its keys go to one Redis Cluster slot once these names carry a hash tag;
nothing outside this module builds a name.
"""

from __future__ import annotations

import re

__all__ = [
    "catalog_key",
    "channel_key",
    "channel_pattern",
    "dead_letter_key",
    "epoch_key",
    "history_channels",
    "retry_key",
    "stream_key",
]

_HISTORY = "signalbus:history:"


def channel_key(prefix: str, channel: str) -> bytes:
    """The pub/sub channel of signal ``channel``."""
    return f"{prefix}{channel}".encode()


def channel_pattern(prefix: str, pattern: str) -> str:
    """A pub/sub pattern for the channels whose names match the glob ``pattern``."""
    return _glob_escape(prefix) + pattern


def stream_key(prefix: str, channel: str) -> bytes:
    """The key of a channel's history stream."""
    return f"{prefix}{_HISTORY}{channel}".encode()


def history_channels(prefix: str) -> tuple[str, int]:
    """A ``SCAN MATCH`` pattern for every history stream, and the length of what comes
    before the channel in each key."""
    head = f"{prefix}{_HISTORY}"
    return _glob_escape(head) + "*", len(head.encode())


def dead_letter_key(prefix: str, channel: str, group: str) -> bytes:
    """The stream where a group's failed events of ``channel`` end up."""
    return f"{prefix}signalbus:dead:{channel}:{group}".encode()


def retry_key(prefix: str, channel: str, group: str) -> bytes:
    """The stream of events given to one group again (requeued dead letters, replays)."""
    return f"{prefix}signalbus:retry:{channel}:{group}".encode()


def epoch_key(prefix: str) -> bytes:
    """A key whose random value names the server's data: made by the first bus that
    asks, it goes when the data goes (a restart without persistence, a flush), which
    is how a process tells that a history stream it knew was lost and made anew."""
    return f"{prefix}signalbus:epoch".encode()


def catalog_key(prefix: str) -> bytes:
    """The hash of the signals buses recorded: channel to definition."""
    return f"{prefix}signalbus:catalog".encode()


def _glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern that matches it alone."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
