"""Numbered events between real processes, through real faults: a sending process, two
listening processes, a private server killed, restarted, frozen, cut off by a proxy.
Each listener must see every event once and in order, or be told of a gap."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from signalbus.testing import Proxy, RedisServer

from .helpers import Child, wait_for

pytestmark = pytest.mark.slow

AOF = ["--appendonly", "yes", "--appendfsync", "always"]


def received(listeners: list[Child], count: int) -> None:
    """Wait until every listener has printed ``count`` events."""
    for listener in listeners:
        wait_for(lambda listener=listener: len(listener.events()) >= count, 30)


def burst(sender: Child, first: int, end: int) -> None:
    """Have ``sender`` send events ``first`` to ``end - 1`` and flush them."""
    sender.ask(f"{first} {end}")
    wait_for(lambda: f"SENT {end}" in sender.lines or sender.process.poll() is not None, 30)
    assert f"SENT {end}" in sender.lines, (sender.lines[-3:], sender.stderr())


def test_redis_killed_and_restarted_while_the_sender_is_idle(
    prefix: str, start_child: Callable[..., Child]
) -> None:
    """Five crashes with AOF, each while the sender is idle and followed by a burst: every
    event reaches both listeners once, in order (issue 11, item 2)."""
    with RedisServer(AOF) as server:
        listeners = [start_child("listen", server.url, prefix, "0") for _ in range(2)]
        sender = start_child("send-on-demand", server.url, prefix, "0")
        sent = 0
        for _ in range(5):
            burst(sender, sent, sent + 20)
            sent += 20
            received(listeners, sent)
            server.stop()  # SIGKILL: a crash
            server.start()
        burst(sender, sent, sent + 20)
        sent += 20
        received(listeners, sent)
        for listener in listeners:
            assert listener.numbers() == list(range(sent)), listener.stderr()
            assert listener.gaps() == []


def test_a_listener_that_had_received_nothing_is_told_of_events_lost_in_a_restart(
    own_server: RedisServer, prefix: str, start_child: Callable[..., Child]
) -> None:
    """A listener cut off before its first event, a restart without persistence: it is
    told of the gap, and receives what is sent after (issue 11, item 1)."""
    with Proxy(own_server.port) as proxy:
        listener = start_child("listen", proxy.url, prefix, "0")
        sender = start_child("send-on-demand", own_server.url, prefix, "0")
        proxy.cut()
        burst(sender, 0, 300)
        own_server.stop()
        own_server.start()  # empty
        proxy.heal()
        wait_for(listener.gaps, 30)
        burst(sender, 300, 310)
        wait_for(lambda: len(listener.events()) >= 10, 30)
        assert listener.numbers() == list(range(300, 310))
        (gap,) = listener.gaps()
        assert gap["channel"] == "auth.logged-in"


def test_a_sigkilled_sender_loses_only_what_it_had_not_written(
    redis_url: str, prefix: str, start_child: Callable[..., Child]
) -> None:
    """What a killed process had queued is lost with it, and nothing can report that; but
    every listener gets the same events up to that point, in order, with no hole."""
    listeners = [start_child("listen", redis_url, prefix, "0") for _ in range(2)]
    sender = start_child("send-on-demand", redis_url, prefix, "0")
    burst(sender, 0, 100)
    sender.ask("100 100000")
    wait_for(lambda: len(listeners[0].events()) > 1000, 30)
    os.kill(sender.process.pid, signal.SIGKILL)
    sender.process.wait(10)
    numbers = [listener.numbers for listener in listeners]
    wait_for(lambda: numbers[0]() and numbers[0]() == numbers[1](), 30)
    seen = numbers[0]()
    assert seen == list(range(len(seen))) and 1000 < len(seen) < 100_000


def test_a_frozen_server_thawed_loses_nothing(
    prefix: str, start_child: Callable[..., Child]
) -> None:
    """The server frozen (SIGSTOP) while events are sent, then thawed: everything
    arrives once, in order."""
    with RedisServer() as server:
        listeners = [start_child("listen", server.url, prefix, "0") for _ in range(2)]
        sender = start_child("send-on-demand", server.url, prefix, "0")
        burst(sender, 0, 50)
        server.pause()
        try:
            sender.ask("50 150")
            wait_for(lambda: "QUEUED 150" in sender.lines, 30)
        finally:
            server.resume()
        wait_for(lambda: "SENT 150" in sender.lines, 30)
        received(listeners, 150)
        for listener in listeners:
            assert listener.numbers() == list(range(150))
