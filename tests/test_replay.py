"""Replay against a real server: past events published again, marked as replayed,
to the processes listening now; dry runs, filters, pacing, and bad input."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
import redis

import signalbus
from signalbus import (
    ArgumentError,
    Bus,
    ConfigurationError,
    Event,
    Namespace,
    PublishError,
    Signal,
)

from .helpers import wait_for

CHANNEL = "auth.logged-in"


class Seen:
    """A receiver that records each event's ``n`` with what current_event() said."""

    def __init__(self) -> None:
        self.events: list[tuple[int, Event]] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None
        self.events.append((kwargs["n"], event))

    def wait(self, count: int) -> list[tuple[int, Event]]:
        wait_for(lambda: len(self.events) >= count)
        return list(self.events)


def stream(prefix: str) -> str:
    return f"{prefix}signalbus:history:{CHANNEL}"


def signal_on(bus: Bus) -> Signal:
    return Namespace("auth", bus=bus).signal("logged-in")


def sent(bus: Bus, count: int) -> list[Event]:
    signal = signal_on(bus)
    for n in range(count):
        signal.send("web", n=n)
    assert bus.flush(10)
    return list(signal.history())


def test_replay_reaches_listeners_marked_replayed_with_original_ids(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    sender_bus, listener_bus, operator_bus = make_bus(), make_bus(), make_bus()
    seen = Seen()
    signal_on(listener_bus).connect(seen)
    kept = sent(sender_bus, 5)
    seen.wait(5)
    progress: list[Event] = []
    report = signal_on(operator_bus).replay(kept[1].stream_id, progress=progress.append)
    replayed = seen.wait(9)[5:]
    assert [n for n, _ in replayed] == [1, 2, 3, 4]
    assert all(event.replayed and event.remote for _, event in replayed)
    assert [(e.id, e.timestamp, e.stream_id) for _, e in replayed] == [
        (e.id, e.timestamp, e.stream_id) for e in kept[1:]
    ]
    assert not any(event.replayed for _, event in seen.events[:5])
    assert [e.id for e in progress] == [e.id for e in kept[1:]]
    assert (report.events, report.skipped, report.listeners, report.dry_run) == (4, 0, 1, False)
    assert report.first is not None and report.first.id == kept[1].id
    assert report.last is not None and report.last.id == kept[4].id
    assert raw.xlen(stream(prefix)) == 5  # a replay is not kept again


def test_a_receiver_can_refuse_replays(make_bus: Callable[..., Bus]) -> None:
    sender_bus, listener_bus = make_bus(), make_bus()
    takes, refuses = Seen(), Seen()
    signal = signal_on(listener_bus)
    signal.connect(takes)
    signal.connect(refuses, replays=False)
    assert signal.takes_replays(takes) and not signal.takes_replays(refuses)
    kept = sent(sender_bus, 2)
    signal_on(sender_bus).replay(kept[0].stream_id)
    takes.wait(4)
    sent(sender_bus, 1)  # a live event after the replay: once it is in, all is
    takes.wait(5)
    wait_for(lambda: len(refuses.events) == 3)
    assert [n for n, _ in refuses.events] == [0, 1, 0]
    assert not any(event.replayed for _, event in refuses.events)


def test_connect_via_and_connected_to_take_replays_too(make_bus: Callable[..., Bus]) -> None:
    signal = signal_on(make_bus())
    seen = Seen()
    signal.connect_via("web", replays=False)(seen)
    assert not signal.takes_replays(seen)
    other = Seen()
    with signal.connected_to(other, replays=False):
        assert not signal.takes_replays(other)
    assert signal.takes_replays(other)  # forgotten once disconnected
    signal.connect(seen)  # connecting again says again
    assert signal.takes_replays(seen)


def test_the_sending_process_gets_its_own_replays(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    seen = Seen()
    signal = signal_on(bus)
    signal.connect(seen)
    signal.send("web", n=0)
    assert bus.flush(10)
    assert len(seen.events) == 1  # the local delivery
    report = signal.replay(datetime.timedelta(minutes=1))
    events = seen.wait(2)
    assert report.events == 1
    assert events[1][1].replayed and events[1][1].id == events[0][1].id


def test_a_dry_run_publishes_nothing(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    sender_bus, listener_bus = make_bus(), make_bus()
    seen = Seen()
    signal_on(listener_bus).connect(seen)
    kept = sent(sender_bus, 3)
    seen.wait(3)
    report = signal_on(sender_bus).replay("0", dry_run=True)
    assert (report.events, report.listeners, report.dry_run) == (3, 0, True)
    assert report.first is not None and report.first.id == kept[0].id
    signal_on(sender_bus).send("web", n=99)
    assert sender_bus.flush(10)
    seen.wait(4)
    assert [n for n, _ in seen.events] == [0, 1, 2, 99]  # nothing replayed before it
    assert raw.xlen(stream(prefix)) == 4


def test_replay_filters_by_since_until_and_limit(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    kept = sent(bus, 10)
    signal = signal_on(bus)

    def replayed(**options: Any) -> list[int]:
        progress: list[Event] = []
        signal.replay(progress=progress.append, dry_run=True, **options)
        return [dict(e.kwargs or {})["n"] for e in progress]

    assert replayed(since=kept[3].stream_id, until=kept[6].stream_id) == [3, 4, 5, 6]
    assert replayed(since=kept[3].stream_id, limit=2) == [3, 4]
    assert replayed(since=datetime.timedelta(hours=1)) == list(range(10))
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert replayed(since=future) == []


def test_replay_is_paced_to_the_rate_asked(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    sent(bus, 11)
    report = signal_on(bus).replay("0", rate=200)
    assert report.events == 11
    # Ten intervals of 5 ms, less what the pacing may run ahead to batch.
    assert report.seconds >= 10 / 200 - 0.005


def test_entries_that_are_not_events_are_skipped_and_counted(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    sender_bus, listener_bus = make_bus(), make_bus()
    seen = Seen()
    signal_on(listener_bus).connect(seen)
    sent(sender_bus, 1)
    raw.xadd(stream(prefix), {"e": b"garbage"})
    raw.xadd(stream(prefix), {"other": b"field"})
    sent(sender_bus, 1)
    seen.wait(2)
    report = signal_on(sender_bus).replay("0")
    assert (report.events, report.skipped) == (2, 2)
    assert [n for n, _ in seen.wait(4)] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"since": None}, "since="),
        ({"since": "yesterday"}, "not a time"),
        ({"since": "0", "until": 3.5}, "not a time"),
        ({"since": "0", "rate": 0}, "rate"),
        ({"since": "0", "rate": -1}, "rate"),
        ({"since": "0", "rate": "fast"}, "rate"),
        ({"since": "0", "rate": True}, "rate"),
        ({"since": "0", "limit": 0}, "limit"),
    ],
)
def test_bad_replay_arguments_are_refused_before_anything_is_published(
    make_bus: Callable[..., Bus], options: dict[str, Any], message: str
) -> None:
    bus = make_bus()
    sent(bus, 1)
    with pytest.raises(ArgumentError, match=message) as raised:
        signal_on(bus).replay(**options)
    assert CHANNEL in str(raised.value)


def test_replay_needs_history_and_a_bus(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="keeps no history"):
        Namespace("auth", bus=bus).signal("other", history=False).replay("0")
    with pytest.raises(ConfigurationError, match="configure"):
        Namespace("auth").signal("logged-in").replay("0")


def test_replay_with_redis_unreachable_says_so(unreachable_url: str) -> None:
    with Bus(unreachable_url) as bus, pytest.raises(PublishError, match="nothing published"):
        signal_on(bus).replay("0")
