"""History against a real server: events kept in a stream in the same round trip as the
PUBLISH, retention, and reading them back."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
import redis

import signalbus
from signalbus import ArgumentError, Bus, ConfigurationError, History, Namespace, Signal

from .helpers import Recorder, wait_for

UTC = datetime.UTC


def stream(prefix: str, channel: str = "auth.logged-in") -> str:
    return f"{prefix}signalbus:history:{channel}"


def sent(bus: Bus, signal: Signal, count: int) -> None:
    for n in range(count):
        signal.send("web", n=n)
    assert bus.flush(10)


def test_events_are_kept_and_read_back_oldest_first(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    sent(bus, signal, 3)
    assert raw.xlen(stream(prefix)) == 3
    events = list(signal.history())
    assert [(e.sender, dict(e.kwargs or {})) for e in events] == [
        ("web", {"n": n}) for n in range(3)
    ]
    assert all(e.channel == "auth.logged-in" and not e.remote for e in events)
    assert [e.stream_id for e in events] == [
        entry_id.decode() for entry_id, _ in raw.xrange(stream(prefix))
    ]


def test_the_published_event_carries_its_stream_entry_id(make_bus: Callable[..., Bus]) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    seen: list[str | None] = []

    def receiver(sender: object, **kwargs: object) -> None:
        event = signalbus.current_event()
        seen.append(event.stream_id if event else None)

    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(receiver)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    sent(sender_bus, signal, 5)
    wait_for(lambda: len(seen) == 5)
    assert seen == [event.stream_id for event in signal.history()]


def test_history_off_for_one_signal_keeps_nothing_and_still_delivers(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in", history=False)
    sent(sender_bus, signal, 2)
    assert recorder.wait(2) == [("web", {"n": 0}), ("web", {"n": 1})]
    assert not raw.exists(stream(prefix))
    with pytest.raises(ConfigurationError, match="keeps no history"):
        signal.history()


@pytest.mark.parametrize(
    ("bus_option", "namespace_option", "signal_option", "kept"),
    [
        (True, None, None, True),
        (False, None, None, False),
        (False, History(max_count=5), None, True),
        (True, False, None, False),
        (True, False, True, True),
        (False, None, History(), True),
    ],
)
def test_the_most_specific_history_option_wins(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    bus_option: object,
    namespace_option: object,
    signal_option: object,
    kept: bool,
) -> None:
    bus = make_bus(history=bus_option)
    namespace = Namespace("auth", bus=bus, history=namespace_option)  # type: ignore[arg-type]
    signal = namespace.signal("logged-in", history=signal_option)
    sent(bus, signal, 1)
    assert raw.exists(stream(prefix)) == kept


def test_retention_by_count_bounds_the_stream(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus(history=History(max_count=10))
    sent(bus, Namespace("auth", bus=bus).signal("logged-in"), 1000)
    # Trimming is approximate (whole stream nodes of up to 100 entries go at once).
    assert 10 <= raw.xlen(stream(prefix)) <= 110


def test_retention_by_age_drops_old_entries(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    for n in range(150):  # a day-old past, written by hand
        raw.xadd(stream(prefix), {"e": b"old"}, id=f"{1_000_000 + n}-0")
    bus = make_bus(history=History(max_age=datetime.timedelta(hours=1)))
    sent(bus, Namespace("auth", bus=bus).signal("logged-in"), 1)
    old = raw.xrange(stream(prefix), "-", "1000200")
    assert len(old) < 150  # the first full node of old entries is gone
    assert raw.xlen(stream(prefix)) == len(old) + 1


def test_history_reads_between_times_and_ids_with_a_limit(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    sent(bus, signal, 5)
    ids = [event.stream_id for event in signal.history()]
    assert len(ids) == 5

    def numbers(**bounds: object) -> list[int]:
        return [dict(e.kwargs or {})["n"] for e in signal.history(**bounds)]  # type: ignore[arg-type]

    assert numbers(since=ids[1], until=ids[3]) == [1, 2, 3]
    assert numbers(limit=2) == [0, 1]
    assert numbers(since=ids[2], limit=10) == [2, 3, 4]
    assert numbers(since=datetime.timedelta(hours=1)) == [0, 1, 2, 3, 4]
    assert numbers(since=datetime.datetime.now(UTC) + datetime.timedelta(hours=1)) == []
    assert numbers(until=datetime.datetime.now(UTC) - datetime.timedelta(hours=1)) == []


def test_history_pages_through_long_streams(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    sent(bus, signal, 1200)
    assert [dict(e.kwargs or {})["n"] for e in signal.history()] == list(range(1200))
    assert len(list(signal.history(limit=700))) == 700


@pytest.mark.parametrize(
    "bounds",
    [{"since": "yesterday"}, {"until": 3.5}, {"since": "12-x"}, {"limit": 0}, {"limit": "5"}],
)
def test_bad_bounds_raise_argument_error(make_bus: Callable[..., Bus], bounds: object) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    with pytest.raises(ArgumentError, match=r"auth\.logged-in"):
        list(signal.history(**bounds))  # type: ignore[arg-type]
    assert issubclass(ArgumentError, ValueError)


def test_garbage_in_the_stream_is_skipped(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    raw.xadd(stream(prefix), {"e": b"not an event"})
    raw.xadd(stream(prefix), {"other": b"field"})
    sent(bus, signal, 1)
    assert [dict(e.kwargs or {}) for e in signal.history()] == [{"n": 0}]
    assert "skipped history entry" in caplog.text


def test_history_needs_a_bus() -> None:
    with pytest.raises(ConfigurationError, match="configure"):
        Namespace("auth").signal("logged-in").history()


def test_a_bad_history_option_is_refused(redis_url: str) -> None:
    with pytest.raises(ConfigurationError):
        Bus(redis_url, history="forever")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        History(max_count=0)
    with pytest.raises(ConfigurationError):
        History(max_age=datetime.timedelta(0))


def test_a_flushed_script_cache_is_loaded_again(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    sent(bus, signal, 1)
    raw.script_flush()
    sent(bus, signal, 1)
    assert raw.xlen(stream(prefix)) == 2
    assert bus.stats()["dropped"] == 0


def test_reading_back_from_an_unreachable_redis_raises_a_transport_error(
    unreachable_url: str,
) -> None:
    with Bus(unreachable_url, close_timeout=0.1) as bus:
        signal = Namespace("auth", bus=bus).signal("logged-in")
        reads: dict[str, Callable[[], object]] = {
            "reading its history failed": lambda: list(signal.history()),
            "reading the dead letters of 'mailer' failed": lambda: list(
                signal.dead_letters("mailer")
            ),
            "reading its groups failed": signal.group_status,
            "requeueing for 'mailer' failed": lambda: signal.requeue("mailer"),
        }
        for what, read in reads.items():
            with pytest.raises(signalbus.TransportError) as raised:
                read()
            assert str(raised.value).startswith(f"signal 'auth.logged-in': {what}: ")
            assert isinstance(raised.value.__cause__, redis.ConnectionError)


def test_a_stream_full_of_garbage_is_skipped_in_two_log_lines(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(50):
        raw.xadd(stream(prefix), {"e": b"not an event %d" % n})
    sent(bus, signal, 1)
    assert [dict(e.kwargs or {}) for e in signal.history()] == [{"n": 0}]
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 2
    assert "49 more history entries of 'auth.logged-in'" in skips[1]
    report = signal.replay("0", dry_run=True)
    assert (report.events, report.skipped) == (1, 50)  # each one still counted
