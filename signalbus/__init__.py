"""blinker signals that reach the receivers of every process, through Redis.

Change ``from blinker import Namespace`` to ``from signalbus import Namespace``,
call :func:`configure` once per process, and ``signal.send(...)`` in one process
runs the receivers connected in all of them.
"""

__version__ = "0.1.0.dev0"

from .bus import Bus, configure
from .errors import (
    ArgumentError,
    ConfigurationError,
    DecodingError,
    EncodingError,
    MessageTooLargeError,
    PublishError,
    SignalBusError,
    SubscribeError,
    TransportError,
    ValidationError,
)
from .event import Event, current_event
from .groups import Group
from .history import History
from .recovery import history_gap
from .replay import ReplayReport
from .signals import Namespace, Signal, default_namespace, signal

__all__ = [
    "ArgumentError",
    "Bus",
    "ConfigurationError",
    "DecodingError",
    "EncodingError",
    "Event",
    "Group",
    "History",
    "MessageTooLargeError",
    "Namespace",
    "PublishError",
    "ReplayReport",
    "Signal",
    "SignalBusError",
    "SubscribeError",
    "TransportError",
    "ValidationError",
    "configure",
    "current_event",
    "default_namespace",
    "history_gap",
    "signal",
]
