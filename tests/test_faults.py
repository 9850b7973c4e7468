"""Faults against a real server: killed connections, a server that stops and comes back,
garbage on the channel, receivers slower than the events."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import msgpack
import pytest
import redis

from signalbus import Bus, Namespace
from signalbus.testing import Ledger, RedisServer

from .helpers import Recorder, wait_for


def _pair(make_bus: Callable[..., Bus], **options: object) -> tuple[Bus, Bus]:
    return make_bus(), make_bus(**options)


def test_subscriber_reconnects_after_client_kill(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    sender_bus, receiver_bus = _pair(make_bus)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    channel = f"{prefix}auth.logged-in"
    assert raw.client_kill_filter(_type="pubsub") >= 1
    wait_for(lambda: receiver_bus.stats()["reconnects"] >= 1)
    wait_for(lambda: raw.pubsub_numsub(channel) == [(channel.encode(), 1)])
    sent.send("web", n=1)
    assert recorder.wait(1) == [("web", {"n": 1})]


def test_publisher_keeps_events_while_redis_is_down(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(own_server.url, prefix=prefix) as receiver_bus,
    ):
        sent = Namespace("auth", bus=sender_bus).signal("logged-in")
        recorder = Recorder()
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
        own_server.stop()
        for n in range(100):
            sent.send("web", n=n)
        wait_for(lambda: sender_bus.stats()["publish_retries"] >= 1)
        assert not sender_bus.flush(timeout=0.2)
        own_server.start()  # same port, empty server
        assert sender_bus.flush(timeout=20)
        assert sender_bus.stats()["published"] == 100
        assert sender_bus.stats()["dropped"] == 0
        # The subscriber came back by itself; new events reach it.
        wait_for(lambda: receiver_bus.stats()["reconnects"] >= 1)
        channel = f"{prefix}auth.logged-in"
        client = own_server.client()
        wait_for(lambda: client.pubsub_numsub(channel) == [(channel.encode(), 1)])
        client.close()
        sent.send("web", n="after")
        wait_for(lambda: ("web", {"n": "after"}) in recorder.calls)
    assert "cannot publish" in caplog.text


def test_connect_while_redis_is_down_subscribes_once_it_is_back(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    own_server.stop()
    with Bus(own_server.url, prefix=prefix, subscribe_timeout=10) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        recorder = Recorder()
        done = threading.Event()
        # connect() gives up waiting as soon as the first attempt fails, long before 10 s.
        connecting = threading.Thread(target=lambda: (signal.connect(recorder), done.set()))
        connecting.start()
        assert done.wait(5)
        connecting.join()
        assert "not confirmed" in caplog.text
        own_server.start()
        channel = f"{prefix}auth.logged-in"
        client = own_server.client()
        wait_for(lambda: client.pubsub_numsub(channel) == [(channel.encode(), 1)], timeout=20)
        client.close()
        with Bus(own_server.url, prefix=prefix) as sender_bus:
            Namespace("auth", bus=sender_bus).signal("logged-in").send("web", n=1)
        assert recorder.wait(1) == [("web", {"n": 1})]


def test_garbage_on_the_channel_is_counted_and_skipped(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender_bus, receiver_bus = _pair(make_bus, max_message_size=10_000)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    channel = f"{prefix}auth.logged-in"
    valid = sender_bus.codec.encode(
        token=b"12345678",
        seq=1,
        channel="auth.logged-in",
        sender="web",
        kwargs={"n": 0},
        timestamp=0.0,
        origin="forger:1",
    )
    moved = valid.replace(b"auth.logged-in", b"auth.logged-ON")
    garbage = [
        b"not msgpack at all",
        valid[:-3],  # truncated
        msgpack.packb({"version": 1}),  # msgpack, not ours
        b"\x91" * 5000,  # deeply nested
        valid + b"x" * 20_000,  # too large
        moved,  # an event of another channel, published here
    ]
    for data in garbage:
        raw.publish(channel, data)
    sent.send("web", n=1)
    assert recorder.wait(1) == [("web", {"n": 1})]
    assert receiver_bus.stats()["invalid"] == len(garbage)
    assert "skipped a message" in caplog.text


def test_raising_receiver_is_logged_and_others_still_run(
    make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    sender_bus, receiver_bus = _pair(make_bus)
    heard = Namespace("auth", bus=receiver_bus).signal("logged-in")

    def broken(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver bug")

    recorder = Recorder()
    heard.connect(broken)
    heard.connect(recorder)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    sent.send("web", n=1)
    sent.send("web", n=2)
    assert recorder.wait(2) == [("web", {"n": 1}), ("web", {"n": 2})]
    wait_for(lambda: receiver_bus.stats()["receiver_errors"] == 2)
    assert "RuntimeError: receiver bug" in caplog.text


def test_slow_receivers_pause_reading_and_lose_nothing(make_bus: Callable[..., Bus]) -> None:
    sender_bus, receiver_bus = _pair(make_bus, dispatch_backlog=10)
    gate = threading.Event()
    recorder = Recorder()

    def slow(sender: object, **kwargs: object) -> None:
        gate.wait(30)
        recorder(sender, **kwargs)

    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(slow)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    for n in range(200):
        sent.send("web", n=n)
    wait_for(lambda: receiver_bus.stats()["dispatch_backlog_waits"] >= 1)
    gate.set()
    calls = recorder.wait(200)
    assert [kwargs["n"] for _, kwargs in calls] == list(range(200))


def test_redis_cutting_a_slow_subscriber_is_noticed(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalbus")
    client = own_server.client()
    client.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
    client.close()
    gate = threading.Event()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(own_server.url, prefix=prefix, dispatch_backlog=5) as receiver_bus,
    ):
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(
            lambda sender, **kwargs: gate.wait(30), weak=False
        )
        sent = Namespace("auth", bus=sender_bus).signal("logged-in")
        # Far more than the kernel's socket buffers hold, so Redis's own buffer fills.
        for n in range(4000):
            sent.send("web", n=n, padding="x" * 4000)
        assert sender_bus.flush(20)
        gate.set()
        # Reading resumes, meets the closed connection, and reconnects.
        wait_for(lambda: receiver_bus.stats()["reconnects"] >= 1, timeout=30)
    assert "subscriber connection lost" in caplog.text


def test_synchronous_send_returns_once_redis_has_the_event(
    make_bus: Callable[..., Bus],
) -> None:
    bus = make_bus(synchronous=True)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(3):
        signal.send("web", n=n)
        assert bus.stats()["published"] == n + 1


def test_publisher_connection_killed_mid_stream_loses_nothing(
    make_bus: Callable[..., Bus], raw: redis.Redis
) -> None:
    sender_bus, receiver_bus = _pair(make_bus)
    ledger = Ledger()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(ledger.receiver)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    for n in range(2000):
        sent.send("web", n=n)
        if n in (500, 1500):
            raw.client_kill_filter(_type="normal", skipme=True)  # the publisher's connection
    assert sender_bus.flush(20)
    # What was written but not answered when the connection died is published again;
    # the receiver drops the second copies, so each event arrives once, in order.
    ledger.wait(2000)
    ledger.check_exactly_once_in_order(2000)
    assert sender_bus.stats()["publish_retries"] >= 1


def test_sparse_events_are_written_at_once_and_flush_sees_them(
    make_bus: Callable[..., Bus],
) -> None:
    sender_bus, receiver_bus = _pair(make_bus)
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    for n in range(20):  # each send waits for the previous event's arrival: a quiet bus
        sent.send("web", n=n)
        recorder.wait(n + 1)
        assert sender_bus.flush(5)
    assert [kwargs["n"] for _, kwargs in recorder.calls] == list(range(20))
    assert sender_bus.stats()["published"] == 20


def test_a_paused_server_makes_drop_drop_instead_of_holding_senders(
    own_server: RedisServer, prefix: str
) -> None:
    url = f"{own_server.url}?socket_timeout=0.5"
    with Bus(url, prefix=prefix, queue_size=10, block_timeout=0.2) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        signal.send("web", n=-1)
        assert bus.flush(5)
        own_server.pause()
        try:
            # The publisher's read times out, Redis counts as failing, and a full queue
            # then drops at once: every send returns, and the loop ends.
            for n in range(200):
                signal.send("web", n=n)
            wait_for(lambda: bus.stats()["dropped"] > 0)
        finally:
            own_server.resume()
        assert bus.flush(10)
        stats = bus.stats()
        assert stats["published"] + stats["dropped"] >= 201
        assert stats["dropped"] < 201
