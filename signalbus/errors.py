"""Every error signalbus raises derives from :class:`SignalBusError`::

    SignalBusError                  catch this to catch anything signalbus raises
    ├── ConfigurationError          a bad URL, option or registration, or a closed bus
    ├── ArgumentError               a bad argument to a call, such as a time for history()
    ├── ValidationError             send(): the arguments do not fit the signal's schema
    ├── EncodingError               send(): a value cannot cross processes; nothing was delivered
    │   └── MessageTooLargeError    send(): the encoded event is over max_message_size
    ├── DecodingError               bytes on a channel are not an event (logged, counted, skipped)
    └── TransportError              Redis is unreachable or refused a command
        ├── PublishError            an event was not published (synchronous mode, or a full queue)
        └── SubscribeError          Redis refused to subscribe to a channel (the user's ACL)

Messages name the signal involved and say what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ConfigurationError",
    "DecodingError",
    "EncodingError",
    "MessageTooLargeError",
    "PublishError",
    "SignalBusError",
    "SubscribeError",
    "TransportError",
    "ValidationError",
]


class SignalBusError(Exception):
    """The root of every error signalbus raises."""


class ConfigurationError(SignalBusError):
    """A bus or signal was given options it cannot work with."""


class ArgumentError(SignalBusError, ValueError):
    """A call was given an argument it cannot use (it is also a :class:`ValueError`)."""


class ValidationError(SignalBusError, ValueError):
    """The arguments of an event do not fit its signal's schema (a pydantic model).

    Raised by ``send()`` before anything is delivered; the message names the signal and
    each failing field with pydantic's own words. An event from another process that
    does not fit is logged, counted and not delivered instead.
    """


class EncodingError(SignalBusError, TypeError):
    """A sender or argument cannot be put on the wire.

    Raised by ``send()`` before any receiver runs, so nothing is half-delivered.
    It is also a :class:`TypeError`, which is what passing an unsupported value is.
    """


class MessageTooLargeError(EncodingError):
    """The encoded event is larger than the bus's ``max_message_size``."""


class DecodingError(SignalBusError):
    """Bytes read from a channel are not a valid signalbus event."""


class TransportError(SignalBusError):
    """Redis could not be reached, or it refused a command."""


class PublishError(TransportError):
    """An event was not published: Redis failed in synchronous mode, or the queue was full."""


class SubscribeError(TransportError):
    """Redis refused to subscribe to a signal's channel: the Redis user's ACL lacks it.

    Raised by ``connect()``, which then leaves the receiver unconnected.
    """
