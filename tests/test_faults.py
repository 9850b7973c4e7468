"""Faults against a real server: killed connections, a server that stops and comes back,
garbage on the channel, receivers slower than the events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import msgpack
import pytest
import redis

from signalbus import Bus, Namespace, PublishError
from signalbus.testing import Ledger, RedisServer
from signalbus.transport import Outgoing, PublishConnection

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


def test_a_burst_after_redis_restarted_while_the_sender_was_idle_arrives_whole_and_in_order(
    prefix: str,
) -> None:
    """The burst's first event is written by send() itself on the connection the crash
    left dead; the next write fails. What was written and not answered must go out
    again before anything newer, on a fresh connection, so that no receiver takes the
    older event for a second copy (issue 11, item 2)."""
    ledger = Ledger()
    sent = 0
    with (
        RedisServer(["--appendonly", "yes", "--appendfsync", "always"]) as server,
        Bus(server.url, prefix=prefix) as sender_bus,
        Bus(server.url, prefix=prefix) as receiver_bus,
    ):
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(ledger.receiver)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        for _ in range(5):
            signal.send("web", n=sent)
            sent += 1
            ledger.wait(sent)  # then the sender is idle
            server.stop()  # SIGKILL: a crash, with every write on disk
            server.start()
            for _ in range(20):  # a burst
                signal.send("web", n=sent)
                sent += 1
            assert sender_bus.flush(20)
            ledger.wait(sent)
        ledger.check_exactly_once_in_order(sent)
        assert sender_bus.stats()["dropped"] == 0


@pytest.fixture
def frozen(own_server: RedisServer) -> Iterator[RedisServer]:
    """The test's own server, which the test may freeze (SIGSTOP); thawed at teardown."""
    try:
        yield own_server
    finally:
        own_server.resume()


def _timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    with contextlib.suppress(PublishError):
        call()
    return time.monotonic() - started


def test_many_threads_sending_to_a_frozen_server_each_wait_at_most_block_timeout(
    frozen: RedisServer, prefix: str
) -> None:
    """No process-wide lock is held while a send waits for room: eight threads whose
    sends meet a full queue each give up after block_timeout, side by side, not one
    after the other (issue 11, item 4)."""
    block_timeout = 0.5
    with Bus(
        frozen.url, prefix=prefix, queue_size=10, queue_full="block", block_timeout=block_timeout
    ) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        signal.send("web", n=-1)
        assert bus.flush(5)
        frozen.pause()
        with pytest.raises(PublishError):  # the publisher holds a batch; the queue fills
            for n in range(100):
                signal.send("web", n=n)
        took: list[float] = []
        threads = [
            threading.Thread(target=lambda: took.append(_timed(lambda: signal.send("web", n=0))))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(took) == 8
        assert max(took) < block_timeout + 1.0, took
        bus.close(timeout=0.1)


def test_large_events_to_a_frozen_server_never_hold_up_send(
    frozen: RedisServer, prefix: str
) -> None:
    """send() writes to the socket itself only small events into empty socket buffers:
    32 kB events to a server that stopped reading are queued, never written by the
    caller until the socket timeout (issue 11, item 4)."""
    with Bus(frozen.url, prefix=prefix, block_timeout=0.5) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        signal.send("web", n=-1)
        assert bus.flush(5)
        frozen.pause()
        pause = threading.Event()
        took = []
        for n in range(200):  # far more than the socket buffers hold
            took.append(_timed(lambda n=n: signal.send("web", n=n, blob="x" * 32_000)))
            pause.wait(0.001)  # a quiet bus: each event would be written directly
        assert max(took) < 1.0, max(took)
        frozen.resume()
        assert bus.flush(20)
        assert bus.stats()["published"] == 201


def test_send_async_never_blocks_the_event_loop(frozen: RedisServer, prefix: str) -> None:
    """A send_async() that meets a full queue waits in a worker thread: the loop goes on."""
    with Bus(frozen.url, prefix=prefix, queue_size=5, queue_full="block", block_timeout=1.0) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        signal.send("web", n=-1)
        assert bus.flush(5)
        frozen.pause()
        with pytest.raises(PublishError):
            for n in range(100):
                signal.send("web", n=n)

        async def main() -> int:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            with pytest.raises(PublishError):
                await signal.send_async("web", n=0)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            return ticks

        assert asyncio.run(main()) >= 10  # the loop ran while send_async waited 1 s
        bus.close(timeout=0.1)


def test_a_batch_that_fails_for_another_reason_than_the_network_is_given_up(
    make_bus: Callable[..., Bus], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug (here: one planted in building the script call) drops its batch, logged and
    counted, and the publisher goes on, instead of retrying it forever."""
    original = PublishConnection._script_call

    def planted_bug(self: PublishConnection, events: Sequence[Outgoing]) -> bytes:
        if any(b"poison" in data for _, data, _ in events):
            raise RuntimeError("a planted bug")
        return original(self, events)

    monkeypatch.setattr(PublishConnection, "_script_call", planted_bug)
    sender_bus, receiver_bus = _pair(make_bus)
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    signal.send("web", n="poison")
    assert not sender_bus.flush(5)  # it was given up
    signal.send("web", n=1)
    assert recorder.wait(1) == [("web", {"n": 1})]
    stats = sender_bus.stats()
    assert (stats["dropped"], stats["published"], stats["publish_retries"]) == (1, 1, 0)
    assert "RuntimeError: a planted bug" in caplog.text


def test_calls_against_a_server_that_never_answers_keep_their_timeouts(
    silent_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """connect() waits at most subscribe_timeout, and not again once a wait went
    unanswered; close() at most close_timeout (issue 11, item 5)."""
    bus = Bus(silent_url, prefix=prefix, subscribe_timeout=1.0, close_timeout=1.0)
    auth = Namespace("auth", bus=bus)
    took = [_timed(lambda name=name: auth.signal(name).connect(Recorder())) for name in "abc"]
    assert max(took) < 2.0 and sum(took) < 3.0, took
    assert "not confirmed" in caplog.text
    auth.signal("a").send("web", n=1)  # queued, never answered
    assert _timed(bus.close) < 2.0


def test_a_value_whose_encoding_sends_an_event_does_not_deadlock(
    make_bus: Callable[..., Bus],
) -> None:
    """A registered type's encode function that itself sends (an audit signal, say) runs
    before the bus takes the lock it numbers events under: no deadlock, and both events
    arrive."""
    sender_bus, receiver_bus = _pair(make_bus)
    audited, logged_in = Recorder(), Recorder()
    Namespace("auth", bus=receiver_bus).signal("encoded").connect(audited)
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(logged_in)
    audit = Namespace("auth", bus=sender_bus).signal("encoded")

    @dataclasses.dataclass
    class User:
        id: int

    def encode(user: User) -> int:
        audit.send("codec", user_id=user.id)
        return user.id

    sender_bus.register_type(User, encode, lambda user_id: user_id, name="User")
    done = threading.Event()
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    threading.Thread(
        target=lambda: (signal.send("web", user=User(7)), done.set()), daemon=True
    ).start()
    assert done.wait(10)
    assert audited.wait(1) == [("codec", {"user_id": 7})]
    assert logged_in.wait(1) == [("web", {"user": 7})]


def test_connect_in_a_process_that_stopped_receiving_does_not_wait(
    make_bus: Callable[..., Bus],
) -> None:
    """A gunicorn --preload master stops receiving once it forked its workers: a receiver
    connected there afterwards gets no confirmation, and connect() does not wait for one."""
    bus = make_bus(subscribe_timeout=10)
    bus.stop_receiving()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    assert _timed(lambda: signal.connect(Recorder())) < 1.0


def test_client_pause_holds_up_no_call_and_loses_nothing(
    own_server: RedisServer, prefix: str
) -> None:
    """CLIENT PAUSE (every client, 2 s): connect() keeps to subscribe_timeout, send()
    returns at once, and what was sent arrives once Redis answers again, in order."""
    ledger = Ledger()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(own_server.url, prefix=prefix, subscribe_timeout=0.5) as receiver_bus,
    ):
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(ledger.receiver)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        signal.send("web", n=0)
        ledger.wait(1)
        with own_server.client() as admin:
            admin.client_pause(2000, all=True)
        late = Namespace("auth", bus=receiver_bus).signal("late")
        assert _timed(lambda: late.connect(Recorder())) < 1.5
        took = [_timed(lambda n=n: signal.send("web", n=n)) for n in range(1, 100)]
        assert max(took) < 0.5, max(took)
        ledger.wait(100, timeout=20)
        ledger.check_exactly_once_in_order(100)
