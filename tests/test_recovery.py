"""Gap recovery against a real server: events missed while disconnected are delivered
from history, once and in order; what history no longer holds is reported.

Every test numbers what it sends and checks what was seen against it (a Ledger).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import fakeredis
import msgpack
import pytest
import redis

from signalbus import Bus, Namespace, Signal
from signalbus.codec import Codec, Envelope
from signalbus.history import PUBLISH_SCRIPT
from signalbus.keyspace import stream_key
from signalbus.recovery import MAX_SENDERS, Recovery
from signalbus.stats import Stats, ThrottledLog
from signalbus.testing import Ledger, Proxy, RedisServer
from signalbus.wire import SIGNED_OFFSET, script_arguments

from .helpers import wait_for

CHANNEL = "auth.logged-in"


def server_ms(client: redis.Redis) -> int:
    """The server's clock, in milliseconds (as stream entry ids count time)."""
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def send(bus: Bus, signal: Signal, numbers: range) -> None:
    for n in numbers:
        signal.send("web", n=n)
    assert bus.flush(20)


def listen(bus: Bus, ledger: Ledger) -> Signal:
    signal = Namespace("auth", bus=bus).signal("logged-in")
    signal.connect(ledger.receiver)
    return signal


@pytest.fixture
def proxy(own_server: RedisServer) -> Iterator[Proxy]:
    with Proxy(own_server.port) as proxy:
        yield proxy


class CutOff(NamedTuple):
    """A sending bus on the server, and a receiving bus whose network the proxy cuts."""

    sender_bus: Bus
    receiver_bus: Bus
    signal: Signal
    """The sender's side of auth.logged-in."""
    ledger: Ledger
    """What the receiver's auth.logged-in receiver saw."""


@pytest.fixture
def cut_off(own_server: RedisServer, proxy: Proxy, prefix: str) -> Iterator[Callable[..., CutOff]]:
    """Make a :class:`CutOff` pair (``listening=False``: not connected yet); closed at
    teardown."""
    with contextlib.ExitStack() as buses:

        def make(*, listening: bool = True, **options: Any) -> CutOff:
            sender_bus = buses.enter_context(Bus(own_server.url, prefix=prefix, **options))
            receiver_bus = buses.enter_context(Bus(proxy.url, prefix=prefix, **options))
            ledger = Ledger()
            if listening:
                listen(receiver_bus, ledger)
            signal = Namespace("auth", bus=sender_bus).signal("logged-in")
            return CutOff(sender_bus, receiver_bus, signal, ledger)

        yield make


def test_events_sent_while_cut_off_are_recovered_once_and_in_order(
    own_server: RedisServer, proxy: Proxy, prefix: str, gaps: list[dict[str, Any]]
) -> None:
    ledger = Ledger()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(proxy.url, prefix=prefix) as receiver_bus,
    ):
        listen(receiver_bus, ledger)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        send(sender_bus, signal, range(0, 50))
        ledger.wait(50)
        proxy.cut()
        send(sender_bus, signal, range(50, 150))  # published while the receiver is away
        proxy.heal()
        wait_for(lambda: receiver_bus.stats()["reconnects"] >= 1)
        ledger.wait(150)
        send(sender_bus, signal, range(150, 200))
        ledger.wait(200)
        ledger.check_exactly_once_in_order(200)
        stats = receiver_bus.stats()
    assert stats["recovered"] == 100
    assert stats["gaps"] == 0 and gaps == []


def test_a_receiver_that_had_seen_nothing_yet_recovers_from_where_it_subscribed(
    own_server: RedisServer, proxy: Proxy, prefix: str
) -> None:
    ledger = Ledger()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(proxy.url, prefix=prefix) as receiver_bus,
    ):
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        send(sender_bus, signal, range(-3, 0))  # before the receiver subscribed: not for it
        # In an earlier millisecond than the subscription: one sent while it is made may
        # arrive.
        with own_server.client() as client:
            last = client.xinfo_stream(stream_key(prefix, "auth.logged-in"))
            kept_at = int(last["last-generated-id"].split(b"-")[0])
            wait_for(lambda: server_ms(client) > kept_at + 1)
        listen(receiver_bus, ledger)
        proxy.cut()
        send(sender_bus, signal, range(0, 20))
        proxy.heal()
        ledger.wait(20)
        send(sender_bus, signal, range(20, 25))
        ledger.wait(25)
        ledger.check_exactly_once_in_order(25)
        assert receiver_bus.stats()["recovered"] >= 20  # and what the catch-up met live


def test_subscriber_connection_killed_while_numbered_events_are_sent(
    make_bus: Callable[..., Bus], raw: redis.Redis
) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    ledger = Ledger()
    listen(receiver_bus, ledger)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    total = 3000
    sending_done = threading.Event()

    def sender() -> None:
        pace = threading.Event()
        for start in range(0, total, 20):
            for n in range(start, start + 20):
                signal.send("web", n=n)
            pace.wait(0.001)  # a steady stream over a few hundred ms, not one burst
        sending_done.set()

    thread = threading.Thread(target=sender)
    thread.start()
    kills = 0
    pause = threading.Event()
    while not sending_done.is_set():
        kills += raw.client_kill_filter(_type="pubsub") > 0
        pause.wait(0.01)
    thread.join(30)
    assert sender_bus.flush(20)
    ledger.wait(total, timeout=30)
    ledger.check_exactly_once_in_order(total)
    assert kills >= 3
    assert receiver_bus.stats()["reconnects"] >= 3
    assert receiver_bus.stats()["gaps"] == 0


def test_redis_restarted_with_persistence_loses_nothing(
    prefix: str, gaps: list[dict[str, Any]]
) -> None:
    ledger = Ledger()
    with (
        RedisServer(["--appendonly", "yes", "--appendfsync", "always"]) as server,
        Bus(server.url, prefix=prefix) as sender_bus,
        Bus(server.url, prefix=prefix) as receiver_bus,
    ):
        listen(receiver_bus, ledger)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        send(sender_bus, signal, range(0, 100))
        ledger.wait(100)
        server.stop()  # SIGKILL: a crash; every write was fsynced
        for n in range(100, 200):  # queued while Redis is down
            signal.send("web", n=n)
        wait_for(lambda: sender_bus.stats()["publish_retries"] >= 2)  # down, and found so
        server.start()
        assert sender_bus.flush(20)
        send(sender_bus, signal, range(200, 300))
        ledger.wait(300, timeout=30)
        ledger.check_exactly_once_in_order(300)
        assert receiver_bus.stats()["reconnects"] >= 1
        assert receiver_bus.stats()["gaps"] == 0 and gaps == []


def test_redis_restarted_without_persistence_reports_the_gap(
    own_server: RedisServer, prefix: str, gaps: list[dict[str, Any]]
) -> None:
    ledger = Ledger()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(own_server.url, prefix=prefix) as receiver_bus,
    ):
        listen(receiver_bus, ledger)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        send(sender_bus, signal, range(0, 10))
        ledger.wait(10)
        last_seen = list(signal.history())[-1].stream_id
        own_server.stop()
        own_server.start()  # empty: the history is gone
        send(sender_bus, signal, range(10, 20))
        ledger.wait(20, timeout=30)
        ledger.check_exactly_once_in_order(20)
        wait_for(lambda: gaps)
        assert receiver_bus.stats()["gaps"] == 1
    assert gaps == [
        {
            "bus": receiver_bus,
            "channel": CHANNEL,
            "last_seen": last_seen,
            "first_kept": gaps[0]["first_kept"],
        }
    ]


def test_trimmed_history_is_reported_and_delivery_resumes_at_what_is_kept(
    own_server: RedisServer,
    proxy: Proxy,
    prefix: str,
    gaps: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    raw = own_server.client()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(proxy.url, prefix=prefix) as receiver_bus,
    ):
        listen(receiver_bus, ledger)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        send(sender_bus, signal, range(0, 10))
        ledger.wait(10)
        proxy.cut()
        send(sender_bus, signal, range(10, 110))
        raw.xtrim(f"{prefix}signalbus:history:{CHANNEL}", maxlen=50, approximate=False)
        first_kept = next(iter(signal.history()))
        proxy.heal()
        ledger.wait(60)
    raw.close()
    assert ledger.seen == [*range(0, 10), *range(60, 110)]
    assert len(gaps) == 1 and gaps[0]["first_kept"] == first_kept.stream_id
    assert f"events on '{CHANNEL}' may be lost" in caplog.text


def test_redis_cutting_a_slow_subscriber_loses_nothing(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = own_server.client()
    client.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
    client.close()
    gate = threading.Event()
    ledger = Ledger()

    def slow(sender: object, **kwargs: Any) -> None:
        gate.wait(30)
        ledger.receiver(sender, **kwargs)

    total = 4000
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(own_server.url, prefix=prefix, dispatch_backlog=5) as receiver_bus,
    ):
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(slow)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        # Far more than the kernel's socket buffers hold, so Redis's own buffer fills.
        for n in range(total):
            signal.send("web", n=n, padding="x" * 4000)
        assert sender_bus.flush(20)
        gate.set()
        ledger.wait(total, timeout=60)
        ledger.check_exactly_once_in_order(total)
        stats = receiver_bus.stats()
    assert stats["reconnects"] >= 1 and stats["recovered"] >= 1
    assert "subscriber connection lost" in caplog.text


def test_an_event_published_twice_is_delivered_once(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    receiver_bus, sender_bus = make_bus(), make_bus()
    ledger = Ledger()
    listen(receiver_bus, ledger)
    data = sender_bus.codec.encode(
        token=b"12345678",
        seq=1,
        channel=CHANNEL,
        sender="web",
        kwargs={"n": 0},
        timestamp=0.0,
        origin="test",
    )
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    for _ in range(2):  # as a publisher retrying after a lost reply would
        epoch = (f"{prefix}signalbus:epoch", "random")
        arguments = (*script_arguments(), *epoch, 100, "0", 1, prefix + CHANNEL, data)
        raw.eval(PUBLISH_SCRIPT, 1, stream, *arguments)  # type: ignore[no-untyped-call]
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    send(sender_bus, signal, range(1, 2))
    ledger.wait(2)
    ledger.check_exactly_once_in_order(2)
    assert raw.xlen(stream) == 3
    # The second copy at least; more if the catch-up that follows subscribing read
    # these events from history before they arrived live.
    assert receiver_bus.stats()["duplicates"] >= 1


def test_events_sent_from_many_threads_are_all_delivered_once(
    make_bus: Callable[..., Bus],
) -> None:
    """A bus numbers and queues each event in one step, so no thread's event can follow
    a higher number from another thread and be taken for a second copy."""
    sender_bus, receiver_bus = make_bus(), make_bus()
    ledger = Ledger()
    listen(receiver_bus, ledger)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    threads, per_thread = 8, 500

    def sender(first: int) -> None:
        for n in range(first, first + per_thread):
            signal.send("web", n=n)

    workers = [threading.Thread(target=sender, args=(t * per_thread,)) for t in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two steps of send()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert sender_bus.flush(20)
    total = threads * per_thread
    ledger.wait(total)
    assert sorted(ledger.seen) == list(range(total)), ledger.report(total)
    assert receiver_bus.stats()["duplicates"] == 0


def test_a_receiver_bus_without_history_neither_recovers_nor_reports(
    own_server: RedisServer, proxy: Proxy, prefix: str, gaps: list[dict[str, Any]]
) -> None:
    ledger = Ledger()
    with (
        Bus(own_server.url, prefix=prefix) as sender_bus,
        Bus(proxy.url, prefix=prefix, history=False) as receiver_bus,
    ):
        listen(receiver_bus, ledger)
        signal = Namespace("auth", bus=sender_bus).signal("logged-in")
        proxy.cut()
        send(sender_bus, signal, range(0, 5))
        proxy.heal()
        raw = own_server.client()
        key = (prefix + CHANNEL).encode()
        wait_for(lambda: raw.pubsub_numsub(key) == [(key, 1)])  # subscribed again
        raw.close()
        send(sender_bus, signal, range(5, 6))
        ledger.wait(1)
    assert ledger.seen == [5]
    assert receiver_bus.stats()["recovered"] == 0 and gaps == []


def test_a_receiver_that_had_seen_nothing_reports_events_lost_in_a_restart(
    cut_off: Callable[..., CutOff],
    own_server: RedisServer,
    proxy: Proxy,
    gaps: list[dict[str, Any]],
) -> None:
    """Subscribed to an empty stream, cut off while 300 events are kept, then Redis
    restarts without persistence: the receiver never had a position in the stream,
    and must still say that events may be lost (issue 11, item 1)."""
    pair = cut_off()
    proxy.cut()
    send(pair.sender_bus, pair.signal, range(0, 300))
    own_server.stop()
    own_server.start()  # empty: the 300 events are gone
    proxy.heal()
    wait_for(lambda: gaps, timeout=20)
    send(pair.sender_bus, pair.signal, range(300, 310))
    pair.ledger.wait(10)
    assert pair.ledger.seen == list(range(300, 310))
    assert pair.receiver_bus.stats()["gaps"] == 1
    assert gaps[0]["channel"] == CHANNEL


def test_a_receiver_that_had_seen_nothing_reports_a_trimmed_history(
    cut_off: Callable[..., CutOff],
    own_server: RedisServer,
    proxy: Proxy,
    gaps: list[dict[str, Any]],
) -> None:
    """The same for retention: of 110 events sent while it was cut off, the stream
    keeps 50; the receiver gets those and reports the rest (issue 11, item 1)."""
    pair = cut_off()
    proxy.cut()
    send(pair.sender_bus, pair.signal, range(0, 110))
    with own_server.client() as raw:
        raw.xtrim(
            f"{pair.sender_bus.prefix}signalbus:history:{CHANNEL}", maxlen=50, approximate=False
        )
    first_kept = next(iter(pair.signal.history()))
    proxy.heal()
    pair.ledger.wait(50)
    wait_for(lambda: gaps)
    assert pair.receiver_bus.stats()["gaps"] == 1
    assert pair.ledger.seen == list(range(60, 110))
    assert len(gaps) == 1 and gaps[0]["first_kept"] == first_kept.stream_id


def test_an_entry_id_in_a_message_cannot_move_a_receivers_position(
    cut_off: Callable[..., CutOff],
    own_server: RedisServer,
    proxy: Proxy,
    gaps: list[dict[str, Any]],
) -> None:
    """The entry id the server appends is outside the signature: a captured signed
    event republished with a far-future id is delivered (it is validly signed and new
    to this receiver), but the receiver's next catch-up does not skip what the stream
    holds (issue 11, item 3)."""
    pair = cut_off(signing_keys=["a signing key long enough to be one"])
    send(pair.sender_bus, pair.signal, range(0, 1))
    pair.ledger.wait(1)
    codec = pair.sender_bus.codec
    captured = codec.signer.sign(
        codec.encode(
            token=b"captured",
            seq=1,
            channel=CHANNEL,
            sender="web",
            kwargs={"n": -1},
            timestamp=0.0,
            origin="elsewhere",
        )
    )
    at = SIGNED_OFFSET  # the envelope's array head, after the signature
    forged = captured[:at] + b"\x99" + captured[at + 1 :] + msgpack.packb("9999999999999-0")
    with own_server.client() as raw:
        raw.publish(pair.sender_bus.prefix + CHANNEL, forged)
    pair.ledger.wait(2)
    proxy.cut()
    send(pair.sender_bus, pair.signal, range(1, 21))
    proxy.heal()
    pair.ledger.wait(22)
    assert pair.ledger.seen == [0, -1, *range(1, 21)]
    stats = pair.receiver_bus.stats()
    assert stats["invalid"] == 1 and stats["gaps"] == 0 and gaps == []


def test_events_sent_after_an_unconfirmed_connect_are_delivered_once_subscribed(
    cut_off: Callable[..., CutOff], proxy: Proxy
) -> None:
    """connect() gives up waiting while Redis is unreachable; what is sent from then
    until the subscription is made comes from history. (What was sent in the last
    millisecond or two before it gave up may come too: the moment is taken by the
    server's clock, and leans towards delivering.)"""
    pair = cut_off(listening=False, subscribe_timeout=0.5)
    proxy.cut()
    listen(pair.receiver_bus, pair.ledger)  # returns unconfirmed
    send(pair.sender_bus, pair.signal, range(0, 10))
    proxy.heal()
    pair.ledger.wait(10)
    send(pair.sender_bus, pair.signal, range(10, 15))
    pair.ledger.wait(15)
    pair.ledger.check_exactly_once_in_order(15)


def test_duplicate_detection_forgets_the_senders_seen_longest_ago() -> None:
    """Past MAX_SENDERS sending buses on a channel, the busiest one is still known."""
    codec = Codec(max_message_size=1 << 20)
    recovery = Recovery(
        fakeredis.FakeRedis(),
        codec,
        lambda key: None,
        b"receiver",
        prefix="",
        gap_sender=None,
        stats=Stats(),
        log=ThrottledLog(),
        stopping=threading.Event(),
    )

    def event(token: bytes, seq: int) -> Envelope:
        return Envelope(token, seq, CHANNEL, None, {}, 0.0, "test")

    busy = b"busy-bus"
    assert not recovery.is_repeat(b"key", event(busy, 1))
    for n in range(MAX_SENDERS):
        assert not recovery.is_repeat(b"key", event(b"%08d" % n, 1))
        if n % 100 == 0:
            assert not recovery.is_repeat(b"key", event(busy, n + 2))
    assert recovery.is_repeat(b"key", event(busy, 1))  # a second copy, still known as one


def test_a_quiet_signal_whose_last_event_was_trimmed_reports_no_gap(
    cut_off: Callable[..., CutOff],
    own_server: RedisServer,
    proxy: Proxy,
    gaps: list[dict[str, Any]],
) -> None:
    """Nothing was added after the last event dispatched: that its entry is gone (the
    signal was quiet for longer than max_age) loses nothing."""
    pair = cut_off()
    pings = Ledger()
    Namespace("auth", bus=pair.receiver_bus).signal("ping").connect(pings.receiver)
    send(pair.sender_bus, pair.signal, range(0, 5))
    pair.ledger.wait(5)
    prefix = pair.sender_bus.prefix
    with own_server.client() as raw:
        raw.xtrim(f"{prefix}signalbus:history:{CHANNEL}", maxlen=0, approximate=False)
        proxy.cut()
        proxy.heal()
        wait_for(lambda: pair.receiver_bus.stats()["reconnects"] >= 1)
        keys = [f"{prefix}auth.{name}".encode() for name in ("logged-in", "ping")]
        wait_for(lambda: raw.pubsub_numsub(*keys) == [(key, 1) for key in keys])
    # Messages are dispatched in order, after the catch-ups of the reconnect.
    send(pair.sender_bus, Namespace("auth", bus=pair.sender_bus).signal("ping"), range(1))
    pings.wait(1)
    assert pair.receiver_bus.stats()["gaps"] == 0 and gaps == []
    send(pair.sender_bus, pair.signal, range(5, 6))
    pair.ledger.wait(6)
    pair.ledger.check_exactly_once_in_order(6)
