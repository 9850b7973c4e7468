"""Waiting for conditions, never for time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        pause.wait(interval)


class Recorder:
    """A receiver that records its calls and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append((sender, kwargs))

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[Any, dict[str, Any]]]:
        wait_for(lambda: len(self.calls) >= count, timeout)
        return list(self.calls)
