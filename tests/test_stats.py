"""Counters written by several threads lose no update."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from signalbus import Bus, Namespace
from signalbus.stats import Stats

from .helpers import wait_for


def racing(counter: str) -> Stats:
    """Stats whose reads of ``counter`` in other threads than the test's wait, up to
    half a second, for a second thread to read it too, and then return what they read
    before: an update that is not under the lock is then lost for sure."""
    meeting = threading.Barrier(2)

    class Racing(Stats):
        def __getattribute__(self, name: str) -> Any:
            value = super().__getattribute__(name)
            if name == counter and threading.current_thread() is not threading.main_thread():
                with contextlib.suppress(threading.BrokenBarrierError):
                    meeting.wait(0.5)
            return value

    return Racing()


def test_two_groups_acknowledging_at_once_both_count(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus._stats = racing("group_handled")  # before the group threads are made
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for group in ("mailer", "audit"):
        signal.connect(lambda sender, **kwargs: None, weak=False, group=group)
    Namespace("auth", bus=make_bus()).signal("logged-in").send("web")
    wait_for(lambda: bus.stats()["group_handled"] == 2)


def test_synchronous_sends_from_two_threads_both_count(make_bus: Callable[..., Bus]) -> None:
    """Synchronous sends from several threads are each counted once."""
    bus = make_bus(synchronous=True)
    bus._publisher._stats = racing("published")
    signal = Namespace("auth", bus=bus).signal("logged-in")
    senders = [threading.Thread(target=signal.send, args=("web",)) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(10)
    assert bus._publisher._stats.published == 2
