"""Groups against a real server and real processes: each event handled by one process of
a group, at least once when a process dies, dead letters after the last attempt."""

from __future__ import annotations

import collections
import datetime
import logging
import signal as os_signal
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import signalbus
from signalbus import Bus, ConfigurationError, Group, Namespace, Signal

from .helpers import Child, wait_for

CHANNEL = "auth.logged-in"


def handled(*processes: Child) -> list[int]:
    return [line["n"] for child in processes for line in child.events()]


def send(bus: Bus, count: int, first: int = 0) -> Signal:
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(first, first + count):
        signal.send("web", n=n)
    assert bus.flush(20)
    return signal


def test_three_processes_in_a_group_handle_each_event_once_and_broadcast_gets_all(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str, start_child: Callable[..., Child]
) -> None:
    members = [start_child("group", redis_url, prefix, "0") for _ in range(3)]
    broadcast = start_child("listen", redis_url, prefix, "1000")
    send(make_bus(), 1000)
    wait_for(lambda: len(handled(*members)) >= 1000 and len(broadcast.events()) >= 1000, 30)
    counts = collections.Counter(handled(*members))
    assert sorted(counts) == list(range(1000))
    assert set(counts.values()) == {1}
    assert sorted(event["kwargs"]["n"] for event in broadcast.events()) == list(range(1000))
    assert all(line["attempt"] == 1 for child in members for line in child.events())
    assert broadcast.finish() == 0


def test_a_member_killed_mid_work_loses_nothing(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str, start_child: Callable[..., Child]
) -> None:
    options = ("--work", "0.005", "--claim-idle", "1")
    members = [start_child("group", redis_url, prefix, "0", *options) for _ in range(3)]
    send(make_bus(), 300)
    victim = wait_for(lambda: next((m for m in members if len(m.events()) >= 10), None))
    victim.process.send_signal(os_signal.SIGKILL)
    victim.process.wait(10)
    wait_for(lambda: set(handled(*members)) >= set(range(300)), 30)
    counts = collections.Counter(handled(*members))
    twice = sorted(n for n, times in counts.items() if times > 1)
    print(f"killed one member of 3 after {len(victim.events())} events: {len(twice)} handled twice")
    assert len(twice) <= 1  # at most the event the victim handled but had not acknowledged
    claimed = [
        line for m in members if m is not victim for line in m.events() if line["attempt"] > 1
    ]
    assert claimed, "the victim's unacknowledged events were claimed by the others"


def test_a_receiver_that_always_raises_sends_the_event_to_dead_letters(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    attempts: list[int] = []
    recovered: list[int] = []
    fail = threading.Event()
    fail.set()

    def flaky(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None and event.group == "mailer"
        attempts.append(event.attempt)
        if fail.is_set():
            raise RuntimeError("the mail server is down")
        recovered.append(kwargs["n"])

    signal = Namespace("auth", bus=bus).signal("logged-in")
    signal.connect(flaky, group=Group("mailer", max_attempts=3, retry_backoff=0.05))
    send(make_bus(), 1)
    wait_for(lambda: bus.stats()["dead_lettered"] == 1)
    assert attempts == [1, 2, 3]
    dead = raw.xrange(f"{prefix}signalbus:dead:{CHANNEL}:mailer")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"attempts"] == b"3"
    assert fields[b"error"] == b"RuntimeError: the mail server is down"
    assert bus.stats()["group_failures"] == 3
    letters = list(signal.dead_letters("mailer"))
    assert [(d.attempts, d.error, dict(d.event.kwargs or {})) for d in letters] == [
        (3, "RuntimeError: the mail server is down", {"n": 0})
    ]
    fail.clear()
    assert signal.requeue("mailer") == 1
    wait_for(lambda: recovered == [0])
    assert list(signal.dead_letters("mailer")) == []


def test_two_groups_on_one_signal_are_independent(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str, start_child: Callable[..., Child]
) -> None:
    mailer = start_child("group", redis_url, prefix, "0", "--group", "mailer")
    audit = [start_child("group", redis_url, prefix, "0", "--group", "audit") for _ in range(2)]
    send(make_bus(), 200)
    wait_for(lambda: len(handled(mailer)) >= 200 and len(handled(*audit)) >= 200, 30)
    assert sorted(handled(mailer)) == list(range(200))
    assert sorted(handled(*audit)) == list(range(200))


def test_a_group_starts_from_now_unless_told_to_start_from_the_beginning(
    make_bus: Callable[..., Bus],
) -> None:
    sender_bus = make_bus()
    send(sender_bus, 3)
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    late: list[int] = []
    everything: list[int] = []
    signal.connect(lambda sender, **kw: late.append(kw["n"]), weak=False, group="late")
    signal.connect(
        lambda sender, **kw: everything.append(kw["n"]),
        weak=False,
        group=Group("replayers", start="beginning"),
    )
    send(sender_bus, 2, first=3)
    wait_for(lambda: len(late) == 2 and len(everything) == 5)
    assert late == [3, 4]
    assert everything == [0, 1, 2, 3, 4]


def test_group_receivers_are_not_broadcast_receivers(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    in_group: list[int] = []
    signal.connect(lambda sender, **kw: in_group.append(kw["n"]), weak=False, group="mailer")
    assert not signal.receivers  # a local send does not run it in the sender's thread
    assert signal.send("web", n=0) == []
    wait_for(lambda: in_group == [0])  # but the group does, through the stream
    assert signal.groups() == [Group("mailer")]


def test_group_options_must_agree_and_need_history(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    signal.connect(print, group=Group("mailer", max_attempts=3))
    with pytest.raises(ConfigurationError, match="same options"):
        signal.connect(repr, group=Group("mailer", max_attempts=4))
    with pytest.raises(ConfigurationError, match="keeps no history"):
        Namespace("auth", bus=bus).signal("other", history=False).connect(print, group="audit")
    with pytest.raises(ConfigurationError, match="max_attempts"):
        Group("mailer", max_attempts=0)
    with pytest.raises(ConfigurationError, match="start"):
        Group("mailer", start="yesterday")  # type: ignore[arg-type]


def test_a_replay_into_one_group_reaches_that_group_alone(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    seen: dict[str, list[tuple[int, bool]]] = {"mailer": [], "audit": [], "broadcast": []}

    def recorder(name: str) -> Callable[..., None]:
        def record(sender: Any, **kwargs: Any) -> None:
            event = signalbus.current_event()
            assert event is not None
            seen[name].append((kwargs["n"], event.replayed))

        return record

    signal.connect(recorder("mailer"), weak=False, group="mailer")
    signal.connect(recorder("audit"), weak=False, group="audit")
    Namespace("auth", bus=make_bus()).signal("logged-in").connect(recorder("broadcast"), weak=False)
    sender_bus = make_bus()
    send(sender_bus, 2)
    wait_for(lambda: all(len(events) == 2 for events in seen.values()))
    report = signal.replay("0", group="mailer")
    assert (report.events, report.listeners) == (2, 0)
    wait_for(lambda: len(seen["mailer"]) == 4)
    send(sender_bus, 1, first=2)  # once each has this one, it had all it gets
    wait_for(lambda: [len(events) for events in seen.values()] == [5, 3, 3])
    assert seen["mailer"] == [(0, False), (1, False), (0, True), (1, True), (2, False)]
    assert seen["audit"] == seen["broadcast"] == [(0, False), (1, False), (2, False)]
    with pytest.raises(signalbus.ArgumentError, match="no group 'mailers' reads it"):
        signal.replay("0", group="mailers")


def test_group_status_shows_members_pending_lag_and_dead_letters(
    make_bus: Callable[..., Bus],
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    assert signal.group_status() == []
    signal.connect(
        lambda sender, **kwargs: 1 / 0,
        weak=False,
        group=Group("mailer", max_attempts=1, retry_backoff=0.05),
    )
    send(make_bus(), 2)
    wait_for(lambda: bus.stats()["dead_lettered"] == 2)
    (status,) = signal.group_status()
    assert (status.name, status.pending, status.lag, status.dead_letters) == ("mailer", 0, 0, 2)
    assert [member.name for member in status.members] == [f"{bus.origin}:{bus._token_hex}"]
    assert status.last_delivered == list(signal.history())[-1].stream_id


def test_history_is_not_trimmed_past_what_a_group_has_not_handled(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    sender_bus = make_bus(history=signalbus.History(max_count=100))
    raw.xgroup_create(stream, "slow", id="$", mkstream=True)  # a group nobody reads now
    send(sender_bus, 500)
    assert raw.xlen(stream) >= 500  # held back: the group is 500 behind
    assert sender_bus.stats()["trim_warnings"] == 0
    send(sender_bus, 1000, first=500)
    assert 1000 <= raw.xlen(stream) < 1500  # past 10 x max_count it must give way, loudly
    assert sender_bus.stats()["trim_warnings"] >= 1
    assert "although a group is" in caplog.text and "events behind" in caplog.text
    raw.xgroup_destroy(stream, "slow")
    send(sender_bus, 1, first=1500)
    assert raw.xlen(stream) < 300  # no group: back to about max_count


def test_age_trimming_keeps_what_a_group_has_not_acknowledged(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    brief = signalbus.History(max_age=datetime.timedelta(milliseconds=1))
    sender_bus = make_bus(history=brief)
    bus = make_bus(history=brief)
    gate = threading.Event()
    handled: list[int] = []

    def blocked(sender: Any, **kwargs: Any) -> None:
        gate.wait(10)
        handled.append(kwargs["n"])

    Namespace("auth", bus=bus).signal("logged-in").connect(blocked, weak=False, group="mailer")
    send(sender_bus, 1)
    wait_for(lambda: raw.xpending(stream, "mailer")["pending"] == 1)  # taken, not acknowledged
    for n in range(1, 5):  # each batch trims by age; the pending entry must stay
        send(sender_bus, 1, first=n)
    assert raw.xrange(stream, count=1)[0][0] == raw.xpending(stream, "mailer")["min"]
    gate.set()
    wait_for(lambda: handled == list(range(5)))


def test_members_gone_for_long_are_removed_from_the_group(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signalbus.groups, "_GONE_AFTER", 0.2)
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    raw.xgroup_create(stream, "mailer", id="$", mkstream=True)
    raw.xreadgroup("mailer", "gone-host:1:0", {stream: ">"})  # a member that read, then died
    bus = make_bus()
    handled: list[int] = []
    Namespace("auth", bus=bus).signal("logged-in").connect(
        lambda sender, **kwargs: handled.append(kwargs["n"]), weak=False, group="mailer"
    )
    send(make_bus(), 1)  # Redis lists a member once it was given something
    wait_for(lambda: handled == [0])

    def members() -> list[bytes]:
        return [member["name"] for member in raw.xinfo_consumers(stream, "mailer")]

    wait_for(lambda: members() == [f"{bus.origin}:{bus._token_hex}".encode()])


def test_group_receivers_keep_to_muted_and_replays_false(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    everything: list[tuple[int, bool]] = []
    originals: list[int] = []

    def record(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None
        everything.append((kwargs["n"], event.replayed))

    signal.connect(record, weak=False, group="mailer")
    signal.connect(
        lambda sender, **kwargs: originals.append(kwargs["n"]),
        weak=False,
        group="mailer",
        replays=False,
    )
    sender_bus = make_bus()
    with signal.muted():  # skipped and acknowledged, as a muted broadcast is: never retried
        send(sender_bus, 1)
        wait_for(lambda: bus.stats()["group_handled"] == 1)
    assert raw.xpending(f"{prefix}signalbus:history:{CHANNEL}", "mailer")["pending"] == 0
    send(sender_bus, 1, first=1)
    wait_for(lambda: originals == [1])
    signal.replay("0", group="mailer")
    wait_for(lambda: len(everything) == 3)  # both receivers run on each event, in one call
    assert everything == [(1, False), (0, True), (1, True)]
    assert originals == [1]
    assert bus.stats()["group_failures"] == 0


def test_trim_warnings_are_counted_each_time_and_logged_once_in_a_while(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    sender_bus = make_bus(history=signalbus.History(max_count=10), synchronous=True)
    raw.xgroup_create(stream, "slow", id="$", mkstream=True)  # a group nobody reads
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    for n in range(200):  # one batch each; past 10 x max_count entries, every one warns
        signal.send("web", n=n)
    assert sender_bus.stats()["trim_warnings"] >= 90
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"signalbus: history trimming: {stream}: trimmed to 100 entries")


def test_count_trimming_goes_on_when_redis_cannot_tell_a_groups_lag(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    sender_bus = make_bus(history=signalbus.History(max_count=100))
    raw.xgroup_create(stream, "steady", id="$", mkstream=True)
    send(sender_bus, 50)
    raw.xdel(stream, raw.xrevrange(stream, count=1)[0][0])  # as for a refused event
    for n in range(12):  # the group keeps up, a few events behind, never at the end
        found = raw.xreadgroup("steady", "member", {stream: ">"}, count=45 if n == 0 else 100)
        raw.xack(stream, "steady", *[entry_id for entry_id, _ in found[0][1]])
        send(sender_bus, 100, first=50 + 100 * n)
    assert raw.xinfo_groups(stream)[0]["lag"] is None  # Redis 7.0 cannot tell it
    assert raw.xlen(stream) < 400  # about max_count, not held back towards 10 x max_count
    assert sender_bus.stats()["trim_warnings"] == 0


def test_a_member_reports_what_its_group_lost_to_trimming(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = f"{prefix}signalbus:history:{CHANNEL}"
    sender_bus = make_bus(history=signalbus.History(max_count=10))
    raw.xgroup_create(stream, "mailer", id="$", mkstream=True)
    send(sender_bus, 5)
    taken = raw.xreadgroup("mailer", "gone-host:1:0", {stream: ">"}, count=3)[0][1]
    send(sender_bus, 300, first=5)  # past 10 x max_count behind: trimmed anyway
    first_kept = raw.xrange(stream, count=1)[0][0].decode()
    assert raw.xlen(stream) < 300 and sender_bus.stats()["trim_warnings"] >= 1
    gaps: list[dict[str, Any]] = []
    handled: list[int] = []
    bus = make_bus()
    with signalbus.history_gap.connected_to(lambda sender, **kwargs: gaps.append(kwargs)):
        Namespace("auth", bus=bus).signal("logged-in").connect(
            lambda sender, **kwargs: handled.append(kwargs["n"]),
            weak=False,
            group=Group("mailer", claim_idle=0.05),
        )
        wait_for(lambda: len(gaps) == 2 and handled and handled[-1] == 304)
    taken_ids = [entry_id.decode() for entry_id, _ in taken]
    assert sorted(gaps, key=lambda gap: gap["last_seen"]) == [
        # the three it held, unacknowledged by a member that is gone
        {
            "channel": CHANNEL,
            "group": "mailer",
            "last_seen": taken_ids[0],
            "first_kept": first_kept,
        },
        # and the two it was never given
        {
            "channel": CHANNEL,
            "group": "mailer",
            "last_seen": taken_ids[2],
            "first_kept": first_kept,
        },
    ]
    assert bus.stats()["group_gaps"] == 2
    assert handled[0] > 4 and raw.xpending(stream, "mailer")["pending"] == 0
    assert "events on 'auth.logged-in' may be lost to group 'mailer'" in caplog.text
