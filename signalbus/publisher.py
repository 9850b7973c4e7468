"""The background publisher: ``send()`` queues, one thread writes batches to Redis.

The caller pays for a deque append, never for a network round trip: the thread
writes what is queued in one system call and reads the replies. When the bus has
been quiet (no send for ``direct_write_gap`` seconds) and nothing is queued, there is
nothing to batch with, so ``send()`` writes its event to the socket itself (a write,
not a round trip) and the thread reads the reply: a lone event does not wait for a
thread to wake up. Replies come back in order; on a failure everything written but
not answered goes back to the front of the queue, so a short outage loses nothing
(and may publish an event twice: delivery is at least once).

The queue is bounded; what happens when it is full is the bus's ``queue_full`` policy:

- ``"drop"`` (the default): while Redis is failing, the new event is not published; it
  is logged (throttled) and counted in ``stats()["dropped"]``, and local receivers
  still run, so a web request is never held up by Redis being away. While Redis is
  answering and the queue is only full because a burst outran the publisher thread,
  ``send()`` first waits up to ``block_timeout`` for room, as a socket buffer would.
- ``"block"``: ``send()`` waits up to ``block_timeout`` seconds for room, then raises
  :class:`PublishError`.
- ``"raise"``: ``send()`` raises :class:`PublishError` at once.

What is still unpublished when the bus closes, after its flush timeout, is counted
as dropped and logged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Literal

from .errors import PublishError, TransportError
from .handoff import Handoff
from .stats import Stats, ThrottledLog
from .transport import Backoff, Outgoing, PublishConnection

__all__ = ["Publisher", "QueueFullPolicy"]

QueueFullPolicy = Literal["drop", "block", "raise"]
QUEUE_FULL_POLICIES: tuple[QueueFullPolicy, ...] = ("drop", "block", "raise")


class _FlushMarker:
    """Queued by ``flush()``; set once everything queued before it was handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_Item = Outgoing | _FlushMarker


class Publisher:
    def __init__(
        self,
        connection: PublishConnection,
        *,
        stats: Stats,
        log: ThrottledLog,
        synchronous: bool,
        queue_size: int,
        queue_full: QueueFullPolicy,
        block_timeout: float,
        direct_write_gap: float = 0.0002,
        batch_size: int = 2048,
        max_backoff: float = 2.0,
    ) -> None:
        self._connection = connection
        self._stats = stats
        self._log = log
        self.synchronous = synchronous
        self._queue: Handoff[_Item] = Handoff(queue_size)
        self._queue_full = queue_full
        self._block_timeout = block_timeout
        self._direct_write_gap = direct_write_gap
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer on the socket at a time
        self._unanswered: deque[list[_Item]] = deque()  # written, replies not read yet
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = True  # False from a failed publish to the next good one
        self._last_submit = 0.0

    def submit(self, event: Outgoing, channel: str, now: float) -> None:
        """Publish ``event`` (of ``channel``): at once if synchronous, else queued.

        ``now`` is the event's timestamp, reused to tell a quiet bus (a clock step
        only costs one event its direct write, or gives it one).
        """
        if self.synchronous:
            self._publish_now(event, channel)
            return
        quiet, self._last_submit = now - self._last_submit > self._direct_write_gap, now
        if quiet and self._write_directly(event):
            return
        if self._queue.full() and not self._make_room(channel):
            return
        self._queue.put(event)
        if self._thread is None:
            self._start()

    def _write_directly(self, event: Outgoing) -> bool:
        """Write ``event`` now if nothing is queued before it; the thread reads the reply."""
        if not (self._healthy and self._thread is not None and not len(self._queue)):
            return False
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            if len(self._queue):
                return False
            self._connection.write([event])
            self._unanswered.append([event])
        except TransportError:
            return False  # queued instead; the thread meets the failure and reconnects
        finally:
            self._write_lock.release()
        self._queue.wake()
        return True

    def _make_room(self, channel: str) -> bool:
        size = self._queue.maxsize
        waits = self._queue_full == "block" or (self._queue_full == "drop" and self._healthy)
        if waits and self._queue.wait_for_space(self._block_timeout):
            return True
        if self._queue_full == "drop":
            self._stats.add("dropped")
            self._log.warning(
                "queue-full",
                "publish queue full (%d events): an event of signal %r was not published; "
                "Redis is %s",
                size,
                channel,
                "failing" if not self._healthy else "too slow",
            )
            return False
        raise PublishError(
            f"signal {channel!r}: the publish queue is full ({size} events) because Redis is "
            "slow or unreachable; nothing was delivered. Retry later, or choose "
            "queue_full='drop' or a larger queue_size"
        )

    def _publish_now(self, event: Outgoing, channel: str) -> None:
        with self._lock:
            try:
                try:
                    (error,) = self._connection.publish([event])
                except TransportError:  # one retry on a fresh connection
                    (error,) = self._connection.publish([event])
            except TransportError as exc:
                raise PublishError(f"signal {channel!r}: {exc}; nothing was delivered") from exc
        if error is not None:
            raise PublishError(f"signal {channel!r}: Redis refused the event: {error}")
        self._stats.published += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is on the server; False on timeout."""
        if self.synchronous or (self._thread is None and not len(self._queue)):
            return True
        marker = _FlushMarker()
        self._queue.put(marker)
        if self._thread is None:
            self._start()
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, stop the thread, count what is left."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._queue.wake()
        if thread is not None:
            # A thread backing off sees the stop at once: a short grace even past the deadline.
            thread.join(max(0.5, deadline - time.monotonic()))
        with self._write_lock:
            unanswered = [item for batch in self._unanswered for item in batch]
            left = [item for item in unanswered + self._queue.clear() if isinstance(item, tuple)]
            self._connection.close()
        if left:
            self._stats.add("dropped", len(left))
            self._log.warning(
                "closed-unpublished",
                "bus closed with %d events not published (Redis slow or unreachable)",
                len(left),
            )

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="signalbus-publisher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        backoff = Backoff(self._stopping, limit=self._max_backoff)
        while True:
            try:
                if self._unanswered:
                    self._read_answers()
                    backoff.reset()
                    self._healthy = True
                elif self._stopping.is_set() and not len(self._queue):
                    return
                elif self._queue.wait(0.5, lambda: self._unanswered):
                    self._write_batch()
            except Exception as exc:  # Redis away, or a bug: either way the thread goes on
                self._healthy = False
                self._stats.add("publish_retries")
                self._log.warning(
                    "publish-failed",
                    "cannot publish, will retry: %s",
                    exc,
                    exc_info=not isinstance(exc, TransportError),
                )
                self._requeue_unanswered()
                if backoff.wait():
                    return

    def _write_batch(self) -> None:
        # Taken under the write lock: a direct write, which checks that the queue is
        # empty under the same lock, can never overtake events taken but not yet written.
        with self._write_lock:
            batch = self._queue.take_nowait(self._batch_size)
            if not batch:
                return
            self._unanswered.append(batch)  # first, so a failed write is requeued too
            events = [item for item in batch if isinstance(item, tuple)]
            if events:
                self._connection.write(events)

    def _read_answers(self) -> None:
        batch = self._unanswered[0]
        events = [item for item in batch if isinstance(item, tuple)]
        errors = self._connection.read_replies(events)
        self._unanswered.popleft()
        refused = [
            (key, error)
            for (key, *_), error in zip(events, errors, strict=True)
            if error is not None
        ]
        self._stats.published += len(events) - len(refused)
        if refused:
            self._stats.add("dropped", len(refused))
            key, error = refused[0]
            self._log.warning(
                "publish-refused",
                "Redis refused %d events, e.g. on channel %r: %s",
                len(refused),
                key.decode(errors="replace"),
                error,
            )
        for item in batch:
            if isinstance(item, _FlushMarker):
                item.done.set()

    def _requeue_unanswered(self) -> None:
        """Start again on a fresh connection with everything not known to be published."""
        with self._write_lock:
            self._connection.close()  # no reply of the old connection can be misread
            items = [item for batch in self._unanswered for item in batch]
            self._unanswered.clear()
            self._queue.put_front(items)
