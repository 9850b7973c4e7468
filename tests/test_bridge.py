"""Bridges against a real server: an existing blinker signal (flask-login's own) carried
between processes, without looping back or delivering twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import blinker
import pytest
from flask_login import user_logged_in

import signalbus
from signalbus import Bus, ConfigurationError, Namespace

from .child import BridgeUser
from .helpers import Child, wait_for

plain = blinker.Signal()
"""A library's signal, as far as these tests know."""


@pytest.fixture
def listener(redis_url: str, prefix: str) -> Iterator[Child]:
    child = Child("bridge", redis_url, prefix, "0")
    child.wait_ready()
    yield child
    child.kill()


def test_a_bridged_library_signal_reaches_other_processes_once(
    make_bus: Callable[..., Bus], listener: Child
) -> None:
    bus = make_bus()
    bridged = bus.bridge(user_logged_in)
    assert bridged.channel == "flask_login.signals.logged-in"
    here: list[tuple[Any, int, bool]] = []

    def on_login(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        here.append((sender, kwargs["user"].id, event is not None and event.remote))

    with user_logged_in.connected_to(on_login):
        user_logged_in.send("web", user=BridgeUser(7))
        user_logged_in.send("web", user=BridgeUser(8))
        wait_for(lambda: len(listener.events()) == 2)
        assert bus.flush(10)
    assert listener.events() == [
        {"sender": "web", "user": 7, "remote": True},
        {"sender": "web", "user": 8, "remote": True},
    ]
    # Once each, locally, in the sender's thread: nothing came back from the bus.
    assert here == [("web", 7, False), ("web", 8, False)]
    assert bus.stats()["own_skipped"] == 2


def test_the_default_channel_is_where_the_signal_is_defined() -> None:
    channel = signalbus.bridge.default_channel
    assert channel(user_logged_in) == "flask_login.signals.logged-in"  # held here too
    assert channel(plain) == "tests.test_bridge.plain"
    with pytest.raises(ConfigurationError, match="no module holds it"):
        channel(blinker.Signal())


def test_remote_events_reach_the_receivers_of_the_original_signal(
    make_bus: Callable[..., Bus],
) -> None:
    sender_bus, receiver_bus = make_bus(), make_bus()
    got: list[tuple[Any, dict[str, Any]]] = []
    receiver_bus.bridge(plain, "library.plain")

    def receiver(sender: Any, **kwargs: Any) -> None:
        got.append((sender, kwargs))

    with plain.connected_to(receiver, sender="web"):
        Namespace("library", bus=sender_bus).signal("plain").send("web", n=1)
        Namespace("library", bus=sender_bus).signal("plain").send("other", n=2)  # filtered
        Namespace("library", bus=sender_bus).signal("plain").send("web", n=3)
        wait_for(lambda: len(got) == 2)
    assert got == [("web", {"n": 1}), ("web", {"n": 3})]


def test_a_value_that_cannot_travel_does_not_break_the_library(
    make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture
) -> None:
    """Delivered here, never raised into the library's send(), counted as unsendable
    (not as dropped: Redis was not the trouble), and logged once in a while, not per send
    (Flask's own suite bridged sends thousands of templates)."""
    bus = make_bus()
    bus.bridge(plain, "library.plain")
    got: list[object] = []
    with plain.connected_to(lambda sender, **kwargs: got.append(kwargs["value"])):
        for _ in range(100):
            plain.send("web", value=object())  # no exception into the library's send()
    assert len(got) == 100
    stats = bus.stats()
    assert (stats["unsendable"], stats["dropped"]) == (100, 0)
    logged = [r for r in caplog.records if "delivered in this process only" in r.getMessage()]
    assert len(logged) == 1 and "library.plain" in logged[0].getMessage()


def test_bad_bridges_are_refused(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="no bridge needed"):
        bus.bridge(Namespace("auth", bus=bus).signal("logged-in"))
    with pytest.raises(ConfigurationError, match="not a channel name"):
        bus.bridge(plain, ".plain")


def test_only_a_blinker_signal_is_bridged(make_bus: Callable[..., Bus]) -> None:
    """A name where the signal was meant failed inside blinker, with an AttributeError."""
    with pytest.raises(ConfigurationError, match="takes a blinker signal"):
        make_bus().bridge("flask_login.user_logged_in")  # type: ignore[arg-type]
