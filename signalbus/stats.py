"""Counters for everything a bus did or could not do, and a logger that cannot flood."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

__all__ = ["Stats"]

logger = logging.getLogger("signalbus")


@dataclasses.dataclass
class Stats:
    """What a bus has done since it started; read it with ``bus.stats()``.

    The hot counters are written by the one thread that owns them, without a lock:
    ``published`` by the publisher thread (synchronous sends too go through it),
    ``received`` by the dispatcher thread and ``own_skipped`` by the reader thread.
    Every other counter has several writers (the threads of each group, the reader
    and the dispatcher, senders...) and goes through :meth:`add`, under a lock: ``+=``
    from two threads can lose an update.
    """

    published: int = 0
    """Events the server accepted."""
    dropped: int = 0
    """Events that were never published: full queue, refused by Redis, or left at close."""
    received: int = 0
    """Events from other buses read from a channel."""
    own_skipped: int = 0
    """This bus's own events, heard back on a channel and not delivered twice."""
    invalid: int = 0
    """Messages on a channel that were not valid events, skipped."""
    receiver_errors: int = 0
    """Exceptions raised by receivers of remote events."""
    reconnects: int = 0
    """Times the subscriber lost its connection and connected again."""
    publish_retries: int = 0
    """Batches published again after Redis failed."""
    dispatch_backlog_waits: int = 0
    """Times the reader waited because receivers were slower than incoming events."""
    recovered: int = 0
    """Events read back from history after a reconnect, to be dispatched."""
    duplicates: int = 0
    """Second copies of events already dispatched, dropped."""
    gaps: int = 0
    """Times events of a channel may have been lost: history no longer reached back."""
    group_handled: int = 0
    """Events this process handled, and acknowledged, for its groups."""
    group_failures: int = 0
    """Tries of a group event that raised (it is tried again, or goes to dead letters)."""
    dead_lettered: int = 0
    """Group events this process moved to dead letters."""
    group_gaps: int = 0
    """Times this process found events of a group trimmed from history before the group
    handled them (see :mod:`signalbus.groups`)."""
    trim_warnings: int = 0
    """Times history trimming dropped events a group had not handled, or failed."""
    subscribe_refused: int = 0
    """Channels Redis refused to subscribe this bus to (the user's ACL lacks them)."""
    unsendable: int = 0
    """Sends of a bridged library signal whose values cannot cross processes: delivered
    in this process only (see :mod:`signalbus.bridge`)."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class ThrottledLog:
    """Logs the first of a kind of trouble at once, then at most once per interval.

    The message that breaks the silence says how many were left unlogged.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        self.log(logging.WARNING, kind, message, *args, exc_info=exc_info)

    def error(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        self.log(logging.ERROR, kind, message, *args, exc_info=exc_info)

    def log(
        self, level: int, kind: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += f" ({quiet} more like this were not logged)"
        logger.log(level, message, *args, exc_info=exc_info)
