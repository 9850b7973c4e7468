"""The background publisher: ``send()`` queues, one thread writes batches to Redis.

The caller pays for a deque append, never for a network round trip: the thread
writes what is queued in one system call and reads the replies. When the bus has
been quiet (no send for ``direct_write_gap`` seconds), nothing is queued and every
earlier write is answered, there is nothing to batch with, so ``send()`` writes a
small event to the socket itself (a write into empty socket buffers, which cannot
block) and the thread reads the reply: a lone event does not wait for a thread to
wake up. Replies come back in order; on a network failure everything written but
not answered goes back to the front of the queue, and the connection refuses every
write until the thread has done so, so a short outage loses nothing and reorders
nothing (an event may be published twice: delivery is at least once, and receivers
drop the second copy). An error that is not the network's (a reply that makes no
sense, a bug) gives up the batch it happened in, logged and counted, and goes on.

Events are placed in the queue (or written) under :attr:`Publisher.ordered`, which
the bus also holds while it numbers them, so they reach Redis in the order of their
numbers, which is how receivers tell a second copy from a new event. Nothing waits
while holding it: a sender that finds the queue full lets go, waits for room, and
numbers its event again.

The queue is bounded; what happens when it is full is the bus's ``queue_full`` policy:

- ``"drop"`` (the default): while Redis is failing, the new event is not published; it
  is logged (throttled) and counted in ``stats()["dropped"]``, and local receivers
  still run, so a web request is never held up by Redis being away. While Redis is
  answering and the queue is only full because a burst outran the publisher thread,
  ``send()`` first waits up to ``block_timeout`` for room, as a socket buffer would.
- ``"block"``: ``send()`` waits up to ``block_timeout`` seconds for room, then raises
  :class:`PublishError`.
- ``"raise"``: ``send()`` raises :class:`PublishError` at once.

In synchronous mode ``send()`` waits, up to ``block_timeout``, until Redis has answered
for its event, and raises :class:`PublishError` if Redis refused it or did not answer
in time (taking it back from the queue when it was not written yet).

What is still unpublished when the bus closes, after its flush timeout, is counted
as dropped and logged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Literal

from .errors import ConfigurationError, PublishError, TransportError
from .handoff import Handoff
from .stats import Stats, ThrottledLog
from .transport import Backoff, Outgoing, PublishConnection

__all__ = ["DIRECT_WRITE_LIMIT", "Confirmation", "Publisher", "QueueFullPolicy"]

QueueFullPolicy = Literal["drop", "block", "raise"]
QUEUE_FULL_POLICIES: tuple[QueueFullPolicy, ...] = ("drop", "block", "raise")

DIRECT_WRITE_LIMIT = 8192
"""The largest event ``send()`` writes to the socket itself. It does so only when every
earlier write was answered, so the socket's buffers are empty, and this much fits in
the smallest of them: the write cannot block, even on a server that stopped answering."""


class Confirmation:
    """Queued after events; set once everything before it was handled.

    ``lost`` tells whether an event was refused or given up between ``lost_before``
    (a count of such events) and its turn;
    ``event`` (in synchronous mode) is the one event its sender waits for, and
    ``error`` why Redis refused that one.
    """

    __slots__ = ("done", "error", "event", "lost", "lost_before", "written")

    def __init__(self, lost_before: int, event: Outgoing | None = None) -> None:
        self.done = threading.Event()
        self.lost_before = lost_before
        self.lost = False
        self.event = event
        self.error: Exception | None = None
        self.written = False
        """Whether ``event`` was written once already (then put back after a failure):
        the server may have it, and publish it, even if it is taken back."""


_Item = Outgoing | Confirmation


class _BatchFailed(Exception):
    """Not the network: something about this batch itself failed."""

    def __init__(self, batch: list[_Item]) -> None:
        super().__init__("a batch failed")
        self.batch = batch


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
        self.block_timeout = block_timeout
        self.ordered = threading.Lock()
        """Held by the bus while it numbers an event and places it (see the module doc)."""
        self._queue: Handoff[_Item] = Handoff(queue_size)
        self._queue_full = queue_full
        self._direct_write_gap = direct_write_gap
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer on the socket at a time
        self._unanswered: deque[list[_Item]] = deque()  # written, replies not read yet
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = True  # False from a failed publish to the next good one
        self._last_failure: BaseException | None = None  # why the last publish failed
        self._last_submit = 0.0
        self._lost = 0  # events queued, then refused or given up: what flush() reports
        self._reported_lost = 0  # ... as of the last flush() that returned

    # -- the sending threads ------------------------------------------------------

    def confirmation(self, event: Outgoing) -> Confirmation:
        """What a synchronous send waits on, queued right after its ``event``."""
        return Confirmation(self._lost, event)

    def place(self, event: Outgoing, now: float, confirmation: Confirmation | None) -> bool:
        """Queue ``event`` (or write it at once), then ``confirmation`` if given; False,
        placing nothing, when the queue is full. Never waits: called under :attr:`ordered`.

        ``now`` is the event's timestamp, reused to tell a quiet bus (a clock step
        only costs one event its direct write, or gives it one).
        """
        quiet, self._last_submit = now - self._last_submit > self._direct_write_gap, now
        if quiet and self._write_directly(event, confirmation):
            return True
        if self._queue.full():
            return False
        self._queue.put(event)
        if confirmation is not None:
            self._queue.put(confirmation)
        if self._stopping.is_set():  # close() began: the thread may be gone already
            self._left_behind(event, confirmation)
        elif self._thread is None:
            self._start()
        return True

    def _left_behind(self, event: Outgoing, confirmation: Confirmation | None) -> None:
        """Count ``event``, placed while the bus was closing, as dropped, unless the
        thread published it or :meth:`close` counted it already (whoever takes it out
        of the queue first)."""
        if not self._queue.withdraw(event):
            return
        if confirmation is not None:
            self._queue.withdraw(confirmation)
            self._fail(confirmation)
        self._lost += 1
        self._stats.add("dropped")
        self._log.warning(
            "closed-unpublished",
            "an event of channel %r was sent while the bus was closing, and not published",
            event[0].decode(errors="replace"),
        )

    @staticmethod
    def _fail(confirmation: Confirmation) -> None:
        confirmation.lost = True
        if confirmation.event is not None:
            confirmation.error = PublishError("the bus was closed before it was published")
        confirmation.done.set()

    def _write_directly(self, event: Outgoing, confirmation: Confirmation | None) -> bool:
        """Write ``event`` now if it is small and the socket idle; the thread reads the reply."""
        if not (
            self._healthy
            and self._thread is not None
            and not self._stopping.is_set()
            and not self._unanswered
            and not len(self._queue)
            and len(event[1]) <= DIRECT_WRITE_LIMIT
            and self._connection.ready
        ):
            return False
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            # close() sets stopping, then collects what is unanswered under this lock;
            # the thread closes a failed connection under it: a write now starts none.
            if (
                len(self._queue)
                or self._unanswered
                or self._stopping.is_set()
                or not self._connection.ready
            ):
                return False
            self._connection.write([event])
            self._unanswered.append([event] if confirmation is None else [event, confirmation])
        except TransportError:
            return False  # queued instead; the thread meets the failure and starts again
        finally:
            self._write_lock.release()
        self._queue.wake()
        return True

    def wait_for_room(self, channel: str, deadline: float) -> bool:
        """After :meth:`place` found the queue full: True once there may be room (place
        again), False if the event is dropped (counted); or raises :class:`PublishError`."""
        waits = self.synchronous or self._queue_full == "block" or self._healthy
        if self._queue_full != "raise" and waits:
            remaining = deadline - time.monotonic()
            if remaining > 0 and self._queue.wait_for_space(remaining):
                return True
        size = self._queue.maxsize
        if self._queue_full == "drop" and not self.synchronous:
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
            f"slow or unreachable (last error: {self._last_error}); nothing was delivered. "
            "Retry later, or choose queue_full='drop' or a larger queue_size"
        ) from self._last_failure

    @property
    def _last_error(self) -> str:
        return "none" if self._last_failure is None else str(self._last_failure)

    def confirm(self, confirmation: Confirmation, channel: str, deadline: float) -> None:
        """Synchronous mode: wait until Redis has answered for the event; raise
        :class:`PublishError` if it refused it or did not answer by ``deadline``."""
        if confirmation.done.wait(max(0.0, deadline - time.monotonic())):
            if confirmation.error is not None:
                raise PublishError(
                    f"signal {channel!r}: Redis refused the event: {confirmation.error}"
                )
            return
        event = confirmation.event
        withdrawn = False
        # The thread takes and writes under the write lock: holding it, the event is
        # either still queued or written. The thread may hold it, stuck on a write to
        # a server that stopped reading: then it is taken as written.
        if event is not None and self._write_lock.acquire(blocking=False):
            try:
                withdrawn = self._queue.withdraw(event)
            finally:
                self._write_lock.release()
        if withdrawn:
            self._queue.withdraw(confirmation)
        if withdrawn and not confirmation.written:
            raise PublishError(
                f"signal {channel!r}: Redis did not take the event within {self.block_timeout}s "
                f"(last error: {self._last_error}); nothing was delivered"
            ) from self._last_failure
        raise PublishError(
            f"signal {channel!r}: Redis did not answer within {self.block_timeout}s (last "
            f"error: {self._last_error}); the event was sent and may still be delivered"
        ) from self._last_failure

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is on the server; False on timeout, or
        if any event queued since the previous flush was refused or given up."""
        if self._thread is None and not len(self._queue):
            return True
        if self._stopping.is_set():  # closing or closed: no thread will answer
            flushed = not len(self._queue) and not self._unanswered
            lost, self._reported_lost = self._lost != self._reported_lost, self._lost
            return flushed and not lost
        confirmation = Confirmation(self._reported_lost)
        self._queue.put(confirmation)
        if self._thread is None:
            self._start()
        return confirmation.done.wait(timeout) and not confirmation.lost

    def close(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, stop the thread, count what is left."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._stopping.set()
            thread = self._thread
        self._queue.wake()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        # The thread may be stuck writing to a server that stopped reading: then what it
        # holds is counted as lost too, and it closes the connection when its write fails.
        locked = self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            unanswered = [item for batch in list(self._unanswered) for item in batch]
            items = unanswered + self._queue.clear()
            left = [item for item in items if isinstance(item, tuple)]
            self._lost += len(left)
            for item in items:
                if isinstance(item, Confirmation):
                    self._fail(item)  # a flush() or synchronous send() racing close()
            if locked:
                self._connection.close()
        finally:
            if locked:
                self._write_lock.release()
        if left:
            self._stats.add("dropped", len(left))
            self._log.warning(
                "closed-unpublished",
                "bus closed with %d events not published (Redis slow or unreachable: %s)",
                len(left),
                self._last_error,
            )

    # -- the publisher thread -----------------------------------------------------

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
            except TransportError as exc:  # Redis away: start again with what is unanswered
                self._healthy = False
                self._last_failure = exc
                self._stats.add("publish_retries")
                self._log.warning("publish-failed", "cannot publish, will retry: %s", exc)
                self._start_again()
                if backoff.wait():
                    return
            except _BatchFailed as failed:
                self._give_up(failed.batch, failed.__cause__)

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
                try:
                    self._connection.write(events)
                except TransportError:
                    raise
                except Exception as exc:
                    raise _BatchFailed(batch) from exc

    def _read_answers(self) -> None:
        batch = self._unanswered[0]
        events = [item for item in batch if isinstance(item, tuple)]
        try:
            errors = self._connection.read_replies(events)
            refused = {
                id(event): error
                for event, error in zip(events, errors, strict=True)
                if error is not None
            }
        except TransportError:
            raise
        except Exception as exc:
            raise _BatchFailed(batch) from exc
        self._unanswered.popleft()
        self._stats.published += len(events) - len(refused)
        if refused:
            self._lost += len(refused)
            self._stats.add("dropped", len(refused))
            example = next(event for event in events if id(event) in refused)
            self._log.warning(
                "publish-refused",
                "Redis refused %d events, e.g. on channel %r: %s",
                len(refused),
                example[0].decode(errors="replace"),
                refused[id(example)],
            )
        self._confirm(batch, refused)

    def _confirm(self, batch: list[_Item], refused: dict[int, Exception]) -> None:
        for item in batch:
            if isinstance(item, Confirmation):
                item.lost = self._lost != item.lost_before
                if item.event is not None:
                    item.error = refused.get(id(item.event))
                else:  # a flush: it reports what was lost since the previous one
                    self._reported_lost = self._lost
                item.done.set()

    def _start_again(self) -> None:
        """Start again on a fresh connection with everything not known to be published,
        put back before anything newer: the connection refuses writes until then."""
        with self._write_lock:
            self._connection.close()  # no reply of the old connection can be misread
            items = [item for batch in self._unanswered for item in batch]
            self._unanswered.clear()
            for item in items:
                if isinstance(item, Confirmation):
                    item.written = True  # a synchronous send: see confirm()
            self._queue.put_front(items)

    def _give_up(self, batch: list[_Item], cause: BaseException | None) -> None:
        """Drop ``batch``, whose publishing failed in a way retrying cannot mend; the
        others written with it are published again on a fresh connection."""
        with self._write_lock:
            if any(pending is batch for pending in self._unanswered):
                self._unanswered.remove(batch)
        events = [item for item in batch if isinstance(item, tuple)]
        self._lost += len(events)
        self._stats.add("dropped", len(events))
        self._last_failure = cause
        self._log.warning(
            "publish-bug",
            "gave up %d events that could not be published (not a network error): %r",
            len(events),
            cause,
            exc_info=cause is not None and not isinstance(cause, ConfigurationError),
        )
        self._start_again()
        failure = PublishError(f"publishing failed: {cause!r}")
        self._confirm(batch, {id(event): failure for event in events})
