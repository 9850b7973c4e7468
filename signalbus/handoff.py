"""A bounded first-in first-out handoff between threads, cheap on the producer's side.

``queue.Queue`` takes a lock and notifies a condition on every put; here a put is a
deque append plus a flag check, and the consumer takes everything waiting at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Handoff"]

T = TypeVar("T")


class _Wakeup:
    """A one-consumer wake-up flag on a bare lock: held means "nothing new".

    ``threading.Event`` goes through a Condition and a fresh waiter lock per wait; a
    bare lock wakes the consumer measurably sooner (p99 of a thread hop here: 33 µs
    against 51 µs), and this hop is on every event's path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def set(self) -> None:
        if self._lock.locked():
            with contextlib.suppress(RuntimeError):  # another producer released it first
                self._lock.release()

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self, timeout: float) -> bool:
        """Wait for :meth:`set`; True if it came (and the flag is clear again)."""
        return self._lock.acquire(timeout=timeout)


class Handoff(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._ready = _Wakeup()
        self._space = threading.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put(self, item: T) -> None:
        """Append regardless of size: callers check :meth:`full` or use :meth:`wait_for_space`."""
        self._items.append(item)
        if not self._ready.is_set():
            self._ready.set()

    def put_front(self, items: list[T]) -> None:
        """Put ``items`` back before everything waiting, in their order."""
        self._items.extendleft(reversed(items))
        if items and not self._ready.is_set():
            self._ready.set()

    def wait_for_space(self, timeout: float) -> bool:
        """Wait until there is room; False if there is none after ``timeout`` seconds."""
        if not self.full():
            return True
        self._space.clear()
        if not self.full():  # the consumer drained between the check and the clear
            return True
        return self._space.wait(timeout) and not self.full()

    def wait(self, timeout: float, other_work: Callable[[], object] | None = None) -> bool:
        """Wait up to ``timeout`` for items; True if there are some.

        ``other_work``, checked after arming the wake-up, ends the wait early when the
        consumer has something else to do; whoever makes that work calls :meth:`wake`.
        """
        if self._items:
            return True
        self._ready.clear()
        if self._items or (other_work is not None and other_work()):
            return bool(self._items)
        self._ready.wait(timeout)
        return bool(self._items)

    def take_nowait(self, limit: int) -> list[T]:
        """Up to ``limit`` items, oldest first, without waiting."""
        items = self._items
        taken = [items.popleft() for _ in range(min(limit, len(items)))]
        if not self._space.is_set() and len(items) < self.maxsize:
            self._space.set()
        return taken

    def take(self, limit: int, timeout: float) -> list[T]:
        """Up to ``limit`` items, oldest first, waiting up to ``timeout`` for the first."""
        self.wait(timeout)
        return self.take_nowait(limit)

    def withdraw(self, item: T) -> bool:
        """Take ``item`` back out, if it is still waiting; whether it was."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        if not self._space.is_set() and not self.full():
            self._space.set()
        return True

    def clear(self) -> list[T]:
        """Remove and return everything waiting."""
        taken = []
        while self._items:
            taken.append(self._items.popleft())
        self._space.set()
        return taken

    def wake(self) -> None:
        """Wake a consumer waiting in :meth:`wait`, e.g. to let it see a stop flag."""
        self._ready.set()
