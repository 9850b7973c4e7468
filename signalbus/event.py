"""What a receiver can learn about the event it is handling, beyond blinker's arguments."""

from __future__ import annotations

import contextvars
import datetime
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["Event", "current_event"]


class Event(NamedTuple):
    """Metadata of one event (immutable, and cheap to make: one is made per send).

    ``id`` is unique across processes and stays the same wherever the event is
    delivered, so receivers can use it to stay idempotent.
    """

    id: str
    channel: str
    origin: str
    """``host:pid`` of the process that sent the event."""
    timestamp: float
    """When the event was sent, in seconds since the epoch (``time.time()``)."""
    remote: bool
    """True when the event was sent by another process (or another bus)."""
    replayed: bool = False
    sender: Any = None
    """The sender, on events read from history (receivers get it as an argument)."""
    kwargs: Mapping[str, Any] | None = None
    """The arguments, on events read from history."""
    stream_id: str | None = None
    """The entry id in the signal's history stream, for a signal with history."""
    group: str | None = None
    """The group handling the event, in a receiver connected with ``group=``."""
    attempt: int = 1
    """Which try this is, for a group receiver (an event is retried until acknowledged)."""

    @property
    def sent_at(self) -> datetime.datetime:
        """``timestamp`` as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.timestamp, datetime.UTC)


# The event being handled, or for a remote one a function that makes it: most
# receivers never ask, so the dispatcher does not build an Event for every message.
_current: contextvars.ContextVar[Event | Callable[[], Event] | None] = contextvars.ContextVar(
    "signalbus_current_event", default=None
)


def current_event() -> Event | None:
    """The event being handled, inside a receiver; ``None`` for a plain local send.

    A send on a signal that has no bus is plain blinker, and has no event.
    """
    value = _current.get()
    return value() if callable(value) else value
