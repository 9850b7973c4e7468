"""Two buses on one real server: events cross, in order, with their metadata."""

from __future__ import annotations

import datetime
import threading
import uuid
import weakref
from collections.abc import Callable

import pytest
import redis

import signalbus
from signalbus import Bus, Namespace

from .helpers import Recorder, wait_for


def test_event_reaches_other_bus_with_metadata(make_bus: Callable[..., Bus]) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    sent = Namespace("auth", bus=sender_bus).signal("logged-in")
    heard = Namespace("auth", bus=receiver_bus).signal("logged-in")
    events: list[signalbus.Event | None] = []
    recorder = Recorder()

    def receiver(sender: object, **kwargs: object) -> None:
        events.append(signalbus.current_event())
        recorder(sender, **kwargs)

    heard.connect(receiver)
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    key = uuid.uuid4()
    assert sent.send("web", user_id=7, at=when, key=key, pair=(1, 2)) == []
    [(sender, kwargs)] = recorder.wait(1)
    assert sender == "web"
    assert kwargs == {"user_id": 7, "at": when, "key": key, "pair": (1, 2)}
    assert type(kwargs["pair"]) is tuple
    event = events[0]
    assert event is not None and event.remote and not event.replayed
    assert event.channel == "auth.logged-in"
    assert event.origin == sender_bus.origin


def test_numsub_counts_processes_and_last_disconnect_unsubscribes(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    channel = f"{prefix}auth.logged-in"
    first, second = Recorder(), Recorder()
    signal.connect(first)
    # connect() returned: the server already counts the subscription.
    assert raw.pubsub_numsub(channel) == [(channel.encode(), 1)]
    signal.connect(second)
    signal.disconnect(first)
    assert raw.pubsub_numsub(channel) == [(channel.encode(), 1)]
    signal.disconnect(second)
    wait_for(lambda: raw.pubsub_numsub(channel) == [(channel.encode(), 0)])


def test_a_burst_faster_than_publishing_waits_for_room_instead_of_dropping(
    make_bus: Callable[..., Bus],
) -> None:
    bus = make_bus(queue_size=50)  # the default queue_full="drop", Redis healthy
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(5000):
        signal.send("web", n=n)
    assert bus.flush(10)
    assert bus.stats()["published"] == 5000
    assert bus.stats()["dropped"] == 0


class App:
    """A stand-in for a Flask app: an object that cannot cross processes."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_a_name_registered_again_stands_for_the_newest_object(
    make_bus: Callable[..., Bus],
) -> None:
    """One app per test (flask-login's own suite): every new app registers its name
    again. Each live one travels under the name; it arrives as the newest there is."""
    sender_bus, receiver_bus = make_bus(), make_bus()
    first, second, here = App("test_login"), App("test_login"), App("test_login")
    sender_bus.register_sender(first, "test_login")
    sender_bus.register_sender(second, "test_login")
    receiver_bus.register_sender(App("old"), "test_login")
    receiver_bus.register_sender(here, "test_login")
    recorder = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(recorder)
    signal = Namespace("auth", bus=sender_bus).signal("logged-in")
    signal.send(first, n=1)
    signal.send(second, n=2)
    assert recorder.wait(2) == [(here, {"n": 1}), (here, {"n": 2})]
    sender_bus.unregister_sender(first)
    with pytest.raises(signalbus.EncodingError, match="register_sender"):
        signal.send(first, n=3)
    receiver_bus.unregister_sender(here)
    signal.send(second, n=4)
    assert recorder.wait(3)[-1] == ("test_login", {"n": 4})  # no object here: the name


def test_senders_are_held_weakly(make_bus: Callable[..., Bus]) -> None:
    """A registered sender that is collected is forgotten, so blinker's weak-sender
    cleanup runs, and its name arrives as the name."""
    bus = make_bus()
    app = App("web")
    collected = threading.Event()
    weakref.finalize(app, collected.set)
    bus.register_sender(app, "web")
    del app  # its last reference: freed at once (the bus holds it weakly)
    assert collected.is_set()
    assert bus.codec._sender_named("web") == "web"
