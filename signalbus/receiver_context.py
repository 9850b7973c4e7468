"""The context remote and group receivers run in (``Bus(receiver_context=...)``).

Entering it may send signals of its own: Flask's ``app.app_context()`` sends
``appcontext_pushed`` and, on leaving, ``appcontext_popped``. Were those bridged, every
event received would publish two more, which every other process would receive inside
a context of its own, and so on without end. So what bridged signals send while the
context is entered or left stays in this process; what receivers send inside it
travels as usual.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

__all__ = ["ReceiverContext", "bridges_publish", "of_sender"]

_setting_up: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "signalbus_setting_up_receivers", default=False
)

MakeContext = Callable[..., AbstractContextManager[object]]


def bridges_publish() -> bool:
    """Whether a bridged signal's send here and now is published."""
    return not _setting_up.get()


class ReceiverContext:
    """A receiver context, entered and left with bridged signals kept local."""

    def __init__(self, context: AbstractContextManager[object]) -> None:
        self._context = context

    def __enter__(self) -> object:
        token = _setting_up.set(True)
        try:
            return self._context.__enter__()
        finally:
            _setting_up.reset(token)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        token = _setting_up.set(True)
        try:
            return self._context.__exit__(kind, error, traceback)
        finally:
            _setting_up.reset(token)


def of_sender(make: MakeContext | None) -> Callable[[Any], ReceiverContext] | None:
    """``receiver_context`` as a callable of the event's sender, whether or not it takes
    one (exactly one positional parameter without a default: it does)."""
    if make is None:
        return None
    try:
        parameters = list(inspect.signature(make).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): called as documented
        parameters = []
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == 1 and positional[0].default is positional[0].empty:
        return lambda sender: ReceiverContext(make(sender))
    return lambda sender: ReceiverContext(make())
