"""Signals on fakeredis: blinker's behaviour kept, events carried between buses.

Two buses on one ``fakeredis.FakeServer`` behave as two processes. The blinker tests
run twice: on a signal without any bus (plain blinker) and on one with a bus.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import blinker
import fakeredis
import pytest
from blinker import ANY

import signalbus
from signalbus import (
    Bus,
    ConfigurationError,
    EncodingError,
    Event,
    Namespace,
    PublishError,
    Signal,
    configure,
    current_event,
)
from signalbus import subscriber as subscriber_module
from signalbus.bus import default_bus

from .helpers import Child, Recorder, wait_for

"""Nothing listens on port 1: connections are refused at once."""


class App:
    """Stands for a Flask app: a sender that cannot cross processes unless registered."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<App {self.label}>"

    def method(self, sender: Any, **kwargs: Any) -> str:
        return f"{self.label} got {sender}"


class Unsendable:
    """No codec knows how to send this."""


def close_all(buses: list[Bus], timeout: float) -> None:
    """Close buses side by side, so teardown costs one poll interval, not one per bus."""
    threads = [threading.Thread(target=bus.close, kwargs={"timeout": timeout}) for bus in buses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(autouse=True)
def quick_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bus threads look for their stop flag every 20 ms instead of 250: quick teardowns."""
    monkeypatch.setattr(subscriber_module, "_POLL", 0.02, raising=False)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake_bus(server: fakeredis.FakeServer, prefix: str) -> Iterator[Callable[..., Bus]]:
    """Make buses on this test's fake server, as many processes would; closed at teardown."""
    buses: list[Bus] = []

    def make(**options: Any) -> Bus:
        options.setdefault("prefix", prefix)
        options.setdefault("client", fakeredis.FakeRedis(server=server))
        options.setdefault("history", False)  # fakeredis runs no Lua: history needs a real server
        bus = Bus(**options)
        buses.append(bus)
        return bus

    yield make
    close_all(buses, timeout=5)


@pytest.fixture
def unreachable_bus(prefix: str, unreachable_url: str) -> Iterator[Callable[..., Bus]]:
    """Make buses pointed at a server that is not there; closed quickly at teardown."""
    buses: list[Bus] = []

    def make(**options: Any) -> Bus:
        options.setdefault("prefix", prefix)
        options.setdefault("subscribe_timeout", 0.5)
        bus = Bus(unreachable_url, **options)
        buses.append(bus)
        return bus

    yield make
    close_all(buses, timeout=0.3)


@pytest.fixture
def no_default_bus() -> Iterator[None]:
    """Start and end without a default bus, whatever the test configures."""
    assert default_bus() is None
    yield
    bus = default_bus()
    if bus is not None:
        bus.close(timeout=5)
    assert default_bus() is None


class Setup:
    """Signals and senders for the blinker tests, with or without a bus."""

    def __init__(self, bus: Bus | None) -> None:
        self.bus = bus
        self.namespace = Namespace("compat", bus=bus)

    def signal(self, name: str = "sig") -> Signal:
        signal = self.namespace.signal(name)
        assert signal.bus is self.bus
        return signal

    def sender(self, label: str) -> App:
        app = App(label)
        if self.bus is not None:
            self.bus.register_sender(app, label)
        return app


@pytest.fixture(params=["plain", "bus"])
def compat(
    request: pytest.FixtureRequest, fake_bus: Callable[..., Bus], no_default_bus: None
) -> Setup:
    return Setup(fake_bus() if request.param == "bus" else None)


def receiver_returning(value: Any, calls: list[Any]) -> Callable[..., Any]:
    def receiver(sender: Any, **kwargs: Any) -> Any:
        calls.append((sender, kwargs))
        return value

    return receiver


def sync_to_async(
    receiver: Callable[..., Any],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def wrapped(sender: Any, **kwargs: Any) -> Any:
        return receiver(sender, **kwargs)

    return wrapped


def async_to_sync(receiver: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    def wrapped(sender: Any, **kwargs: Any) -> Any:
        return asyncio.run(receiver(sender, **kwargs))

    return wrapped


# -- what a signal is --------------------------------------------------------------


def test_signal_is_a_blinker_named_signal_with_a_channel() -> None:
    signal = Namespace("auth").signal("logged-in", doc="A user logged in.")
    assert issubclass(Signal, blinker.NamedSignal)
    assert isinstance(signal, Signal)
    assert signal.name == "logged-in"
    assert signal.channel == "auth.logged-in"
    assert signal.__doc__ == "A user logged in."


def test_namespace_without_a_name_takes_the_defining_module() -> None:
    assert Namespace().name == __name__
    assert Namespace().signal("x").channel == f"{__name__}.x"
    scope: dict[str, Any] = {"__name__": "myapp.auth", "Namespace": Namespace}
    exec("signals = Namespace()\nsignal = signals.signal('logged-in')", scope)
    assert scope["signals"].name == "myapp.auth"
    assert scope["signal"].channel == "myapp.auth.logged-in"


def test_namespace_returns_the_same_signal_for_the_same_name() -> None:
    namespace = Namespace("auth")
    first = namespace.signal("logged-in")
    assert namespace.signal("logged-in") is first
    assert namespace["logged-in"] is first
    assert namespace.signal("logged-out") is not first
    assert Namespace("auth").signal("logged-in") is not first


def test_unknown_signal_option_raises_configuration_error() -> None:
    namespace = Namespace("auth")
    with pytest.raises(ConfigurationError, match="colour"):
        namespace.signal("logged-in", colour="red")
    assert "logged-in" not in namespace
    with pytest.raises(ConfigurationError, match="colour"):
        Signal("logged-in", namespace="auth", colour="red")


def test_unknown_signal_option_raises_for_an_existing_signal_too() -> None:
    namespace = Namespace("auth")
    namespace.signal("logged-in")
    with pytest.raises(ConfigurationError, match="colour"):
        namespace.signal("logged-in", colour="red")


# -- blinker's behaviour, with and without a bus -----------------------------------


def test_connect_send_disconnect(compat: Setup) -> None:
    signal = compat.signal()
    calls: list[Any] = []
    first = receiver_returning("one", calls)
    second = receiver_returning("two", calls)
    assert signal.connect(first) is first
    signal.connect(second)
    results = signal.send("web", n=1)
    assert sorted(results, key=lambda pair: pair[1]) == [(first, "one"), (second, "two")]
    assert calls == [("web", {"n": 1})] * 2
    signal.disconnect(first)
    assert signal.send("web", n=2) == [(second, "two")]
    signal.disconnect(second)
    assert signal.send("web", n=3) == []
    assert not signal.receivers
    assert len(calls) == 3


def test_sender_filtering(compat: Setup) -> None:
    signal = compat.signal()
    alice, bob = compat.sender("alice"), compat.sender("bob")
    for_alice, for_any = Recorder(), Recorder()
    signal.connect(for_alice, sender=alice)
    signal.connect(for_any, sender=ANY)
    signal.send(alice, n=1)
    signal.send(bob, n=2)
    signal.send("web", n=3)
    signal.send(None, n=4)
    assert for_alice.calls == [(alice, {"n": 1})]
    assert [kwargs["n"] for _, kwargs in for_any.calls] == [1, 2, 3, 4]


def test_connect_via_and_connected_to(compat: Setup) -> None:
    signal = compat.signal()
    alice = compat.sender("alice")
    calls: list[Any] = []

    @signal.connect_via(alice)
    def via(sender: Any, **kwargs: Any) -> str:
        calls.append(("via", sender))
        return "via"

    assert signal.send(alice) == [(via, "via")]
    assert signal.send("web") == []
    temporary = Recorder()
    with signal.connected_to(temporary, sender="web"):
        assert signal.send("web", n=1) == [(temporary, None)]
    assert signal.send("web", n=2) == []
    assert temporary.calls == [("web", {"n": 1})]
    assert calls == [("via", alice)]


def test_connect_via_keeps_a_strong_reference(compat: Setup) -> None:
    signal = compat.signal()
    calls: list[Any] = []

    def install() -> None:
        @signal.connect_via(ANY)
        def local(sender: Any, **kwargs: Any) -> None:
            calls.append(sender)

    install()
    gc.collect()
    signal.send("web")
    assert calls == ["web"]


def test_muted_signal_runs_no_receiver(compat: Setup) -> None:
    signal = compat.signal()
    recorder = Recorder()
    signal.connect(recorder)
    with signal.muted():
        assert signal.send("web", n=1) == []
        assert asyncio.run(signal.send_async("web", _sync_wrapper=sync_to_async, n=2)) == []
    assert signal.send("web", n=3) == [(recorder, None)]
    assert recorder.calls == [("web", {"n": 3})]


def test_receivers_for_and_has_receivers_for(compat: Setup) -> None:
    signal = compat.signal()
    alice, bob = compat.sender("alice"), compat.sender("bob")
    assert not signal.has_receivers_for(alice)
    assert list(signal.receivers_for(alice)) == []
    for_alice = Recorder()
    signal.connect(for_alice, sender=alice)
    assert signal.has_receivers_for(alice)
    assert not signal.has_receivers_for(bob)
    assert list(signal.receivers_for(alice)) == [for_alice]
    assert list(signal.receivers_for(bob)) == []
    for_any = Recorder()
    signal.connect(for_any)
    assert signal.has_receivers_for(bob)
    assert list(signal.receivers_for(bob)) == [for_any]
    assert {id(r) for r in signal.receivers_for(alice)} == {id(for_alice), id(for_any)}


def test_send_async_awaits_receivers_with_sync_wrapper(compat: Setup) -> None:
    signal = compat.signal()
    calls: list[Any] = []

    async def coroutine_receiver(sender: Any, **kwargs: Any) -> str:
        calls.append(("async", sender, kwargs))
        return "async"

    sync_receiver = receiver_returning("sync", calls)
    signal.connect(coroutine_receiver)
    results = asyncio.run(signal.send_async("web", n=1, _sync_wrapper=sync_to_async))
    assert {result for _, result in results} == {"async"}
    signal.connect(sync_receiver)
    results = asyncio.run(signal.send_async("web", n=2, _sync_wrapper=sync_to_async))
    assert sorted(result for _, result in results) == ["async", "sync"]
    assert ("async", "web", {"n": 2}) in calls and ("web", {"n": 2}) in calls
    with pytest.raises(RuntimeError):
        asyncio.run(signal.send_async("web", n=3))


def test_send_to_a_coroutine_receiver_needs_an_async_wrapper(compat: Setup) -> None:
    signal = compat.signal()

    async def coroutine_receiver(sender: Any, **kwargs: Any) -> int:
        return int(kwargs["n"]) * 2

    signal.connect(coroutine_receiver)
    assert signal.send("web", n=21, _async_wrapper=async_to_sync) == [(coroutine_receiver, 42)]
    with pytest.raises(RuntimeError):
        signal.send("web", n=1)


def test_weak_receivers_are_dropped_when_collected(compat: Setup) -> None:
    signal = compat.signal()
    calls: list[Any] = []
    function = receiver_returning(None, calls)
    app = App("owner")
    strong = receiver_returning("strong", calls)
    signal.connect(function)
    signal.connect(app.method)
    signal.connect(strong, weak=False)
    assert len(signal.send("web")) == 3
    del function, app, strong
    gc.collect()
    assert [result for _, result in signal.send("web")] == ["strong"]
    assert len(signal.receivers) == 1


def test_receiver_connected_and_disconnected_signals_fire(compat: Setup) -> None:
    signal = compat.signal()
    notices: list[tuple[str, Any, dict[str, Any]]] = []

    def on_connected(emitter: Any, **kwargs: Any) -> None:
        notices.append(("connected", emitter, kwargs))

    def on_disconnected(emitter: Any, **kwargs: Any) -> None:
        notices.append(("disconnected", emitter, kwargs))

    signal.receiver_connected.connect(on_connected)
    signal.receiver_disconnected.connect(on_disconnected)
    receiver = Recorder()
    signal.connect(receiver, sender="web", weak=False)
    assert notices == [
        ("connected", signal, {"receiver": receiver, "sender": "web", "weak": False})
    ]
    signal.disconnect(receiver)
    assert notices[1:] == [("disconnected", signal, {"receiver": receiver, "sender": ANY})]
    assert signal.send("web") == []


# -- current_event() ---------------------------------------------------------------


def test_without_a_bus_a_signal_is_plain_blinker(no_default_bus: None) -> None:
    signal = Namespace("local").signal("only")
    events: list[Event | None] = []

    def receiver(sender: Any, **kwargs: Any) -> str:
        events.append(current_event())
        return "done"

    signal.connect(receiver)
    assert signal.bus is None
    # Without a bus nothing is encoded: any sender and any value will do, as in blinker.
    sender, value = object(), Unsendable()
    assert signal.send(sender, value=value) == [(receiver, "done")]
    assert events == [None]


def test_with_a_bus_a_local_receiver_sees_a_local_event(fake_bus: Callable[..., Bus]) -> None:
    bus = fake_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    events: list[Event | None] = []
    signal.connect(lambda sender, **kwargs: events.append(current_event()), weak=False)
    signal.send("web")
    signal.send("web")
    first, second = events
    assert first is not None and second is not None
    assert first.remote is False and first.replayed is False
    assert first.channel == "auth.logged-in"
    assert first.origin == bus.origin
    assert first.id != second.id
    assert current_event() is None


# -- between buses -----------------------------------------------------------------


def test_remote_event_carries_sender_kwargs_and_metadata(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    local_events: list[Event | None] = []
    remote_events: list[Event | None] = []
    recorder = Recorder()

    def local(sender: Any, **kwargs: Any) -> None:
        local_events.append(current_event())

    def remote(sender: Any, **kwargs: Any) -> None:
        remote_events.append(current_event())
        recorder(sender, **kwargs)

    sent.connect(local)
    heard.connect(remote)
    results = sent.send("web", user_id=7, pair=(1, 2), tags={"a"})
    assert results == [(local, None)]
    [(sender, kwargs)] = recorder.wait(1)
    assert sender == "web"
    assert kwargs == {"user_id": 7, "pair": (1, 2), "tags": {"a"}}
    assert type(kwargs["pair"]) is tuple
    [local_event], [remote_event] = local_events, remote_events
    assert local_event is not None and remote_event is not None
    assert remote_event.remote is True and local_event.remote is False
    assert remote_event.id == local_event.id
    assert remote_event.channel == "auth.logged-in"
    assert remote_event.origin == sending.origin


def test_send_async_reaches_other_buses(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    recorder = Recorder()
    heard.connect(recorder)
    asyncio.run(sent.send_async("web", n=1, _sync_wrapper=sync_to_async))
    assert recorder.wait(1) == [("web", {"n": 1})]


def test_registered_sender_is_revived_and_filters_on_the_receiving_side(
    fake_bus: Callable[..., Bus],
) -> None:
    sending, receiving, unaware = fake_bus(), fake_bus(), fake_bus()
    app_here, app_there, other = App("here"), App("there"), App("other")
    sending.register_sender(app_here, "app")
    receiving.register_sender(app_there, "app")
    receiving.register_sender(other, "other")
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    heard_unaware = Namespace("auth", bus=unaware).signal("logged-in")
    for_app, for_other, for_any, for_any_unaware = Recorder(), Recorder(), Recorder(), Recorder()
    heard.connect(for_app, sender=app_there)
    heard.connect(for_other, sender=other)
    heard.connect(for_any)
    heard_unaware.connect(for_any_unaware)
    sent.send(app_here, n=1)
    sent.send("web", n=2)  # the last: once it arrived, every receiver of the first ran
    assert for_any.wait(2) == [(app_there, {"n": 1}), ("web", {"n": 2})]
    assert for_any_unaware.wait(2) == [("app", {"n": 1}), ("web", {"n": 2})]
    assert type(for_any_unaware.calls[0][0]) is str
    assert for_app.calls == [(app_there, {"n": 1})]
    assert for_other.calls == []


def test_sending_bus_does_not_receive_its_own_event_again(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    mine, theirs = Recorder(), Recorder()
    sent.connect(mine)
    heard.connect(theirs)
    sent.send("web", n=1)
    theirs.wait(1)
    wait_for(lambda: sending.stats()["own_skipped"] == 1)
    assert mine.calls == [("web", {"n": 1})]
    assert sending.stats()["received"] == 0
    assert receiving.stats()["received"] == 1


def test_raising_receiver_is_counted_and_others_still_run(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")

    def make_failing(number: int) -> Callable[..., None]:
        def failing(sender: Any, **kwargs: Any) -> None:
            raise ValueError(f"receiver {number} fails")

        return failing

    # Receivers run in an undefined order: surround the good one with bad ones.
    failing = [make_failing(number) for number in range(3)]
    good = Recorder()
    heard.connect(failing[0])
    heard.connect(good)
    heard.connect(failing[1])
    heard.connect(failing[2])
    sent.send("web", n=1)
    sent.send("web", n=2)
    assert good.wait(2) == [("web", {"n": 1}), ("web", {"n": 2})]
    wait_for(lambda: receiving.stats()["receiver_errors"] == 6)


def test_encoding_failure_raises_and_delivers_nothing(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    local, remote = Recorder(), Recorder()
    sent.connect(local)
    heard.connect(remote)
    with pytest.raises(EncodingError, match="'culprit'"):
        sent.send("web", fine=1, culprit=Unsendable())
    with pytest.raises(EncodingError, match="register_sender"):
        sent.send(App("unregistered"), n=1)
    assert local.calls == []
    sent.send("web", n="after")
    # Events on one channel arrive in order: a published failure would arrive first.
    assert remote.wait(1)[0] == ("web", {"n": "after"})
    assert sending.flush(timeout=5)
    assert sending.stats()["published"] == 1
    assert local.calls == [("web", {"n": "after"})]


def test_muted_signal_does_not_publish(fake_bus: Callable[..., Bus]) -> None:
    sending, receiving = fake_bus(), fake_bus()
    sent = Namespace("auth", bus=sending).signal("logged-in")
    heard = Namespace("auth", bus=receiving).signal("logged-in")
    local, remote = Recorder(), Recorder()
    sent.connect(local)
    heard.connect(remote)
    with sent.muted():
        assert sent.send("web", n="muted") == []
    sent.send("web", n="after")
    assert remote.wait(1)[0] == ("web", {"n": "after"})
    assert local.calls == [("web", {"n": "after"})]
    assert sending.flush(timeout=5)
    assert sending.stats()["published"] == 1


def test_collected_receiver_unsubscribes_the_bus(
    fake_bus: Callable[..., Bus], server: fakeredis.FakeServer, prefix: str
) -> None:
    bus = fake_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    channel = f"{prefix}auth.logged-in"
    observer = fakeredis.FakeRedis(server=server)
    receiver = Recorder()
    signal.connect(receiver)
    assert observer.pubsub_numsub(channel) == [(channel.encode(), 1)]
    del receiver
    gc.collect()
    assert not signal.receivers
    wait_for(lambda: observer.pubsub_numsub(channel) == [(channel.encode(), 0)])


# -- configure() and the default bus -----------------------------------------------


def test_receivers_connected_before_configure_get_remote_events(
    no_default_bus: None,
    fake_bus: Callable[..., Bus],
    server: fakeredis.FakeServer,
    prefix: str,
) -> None:
    heard = Namespace("late").signal("bound")
    recorder = Recorder()
    heard.connect(recorder)
    assert heard.bus is None
    assert heard.send("before", n=0) == [(recorder, None)]

    bus = configure(client=fakeredis.FakeRedis(server=server), prefix=prefix, history=False)
    assert default_bus() is bus and heard.bus is bus
    sent = Namespace("late", bus=fake_bus()).signal("bound")
    sent.send("remote", n=1)
    assert recorder.wait(2)[1] == ("remote", {"n": 1})

    again = configure(client=fakeredis.FakeRedis(server=server), prefix=prefix, history=False)
    assert bus.closed and heard.bus is again
    sent.send("remote", n=2)
    assert recorder.wait(3)[2] == ("remote", {"n": 2})

    again.close(timeout=5)
    assert default_bus() is None and heard.bus is None
    # Local-only again: the signal sends as plain blinker, with no event.
    assert heard.send(object(), n=3) == [(recorder, None)]


# -- bus options -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"queue_full": "sometimes"},
        {"queue_full": None},
        {"queue_size": 0},
        {"max_message_size": -1},
        {"dispatch_backlog": 0},
        {"prefix": b"bytes"},
    ],
    ids=["queue_full", "queue_full-none", "queue_size", "max_message_size", "backlog", "prefix"],
)
def test_bad_option_raises_configuration_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        Bus(client=fakeredis.FakeRedis(), **options)


@pytest.mark.parametrize("url", ["http://localhost", "not a url", "nope://user:secret@host/0"])
def test_bad_url_raises_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Bus(url)
    assert "secret" not in str(caught.value)


def test_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALBUS_URL", "redis://example.invalid:6390/3")
    with Bus() as bus:
        assert bus.url == "redis://example.invalid:6390/3"
    monkeypatch.delenv("SIGNALBUS_URL")
    with Bus() as bus:
        assert bus.url == "redis://localhost:6379/0"


def test_closed_bus_refuses_to_send(fake_bus: Callable[..., Bus]) -> None:
    bus = fake_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    recorder = Recorder()
    signal.connect(recorder)
    bus.close(timeout=5)
    assert bus.closed
    with pytest.raises(ConfigurationError, match=r"auth\.logged-in"):
        signal.send("web")
    assert recorder.calls == []


def test_context_manager_flushes_and_closes(
    server: fakeredis.FakeServer, prefix: str, fake_bus: Callable[..., Bus]
) -> None:
    heard = Namespace("auth", bus=fake_bus()).signal("logged-in")
    recorder = Recorder()
    heard.connect(recorder)
    with Bus(client=fakeredis.FakeRedis(server=server), prefix=prefix, history=False) as bus:
        Namespace("auth", bus=bus).signal("logged-in").send("web", n=1)
    assert bus.closed
    assert bus.stats()["published"] == 1
    assert recorder.wait(1) == [("web", {"n": 1})]


def test_flush_returns_true_once_everything_is_published(fake_bus: Callable[..., Bus]) -> None:
    bus = fake_bus()
    assert bus.flush(timeout=5) is True
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(20):
        signal.send("web", n=n)
    assert bus.flush(timeout=5) is True
    assert bus.stats()["published"] == 20
    assert bus.stats()["dropped"] == 0


def test_synchronous_send_to_unreachable_server_raises_before_receivers(
    unreachable_bus: Callable[..., Bus],
) -> None:
    bus = unreachable_bus(synchronous=True)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    recorder = Recorder()
    signal.connect(recorder)
    with pytest.raises(PublishError, match=r"auth\.logged-in"):
        signal.send("web", n=1)
    assert recorder.calls == []
    assert bus.stats()["published"] == 0


def test_queue_full_raise_refuses_a_later_send(unreachable_bus: Callable[..., Bus]) -> None:
    bus = unreachable_bus(queue_full="raise", queue_size=1)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    ran: list[int] = []
    signal.connect(lambda sender, **kwargs: ran.append(kwargs["n"]), weak=False)
    # The publisher thread may hold the first event while it retries, which frees the
    # queue once; after that, nothing leaves it.
    refused: tuple[int, PublishError] | None = None
    for n in range(1, 11):
        try:
            signal.send("web", n=n)
        except PublishError as exc:
            refused = (n, exc)
            break
    assert refused is not None, "ten sends into a queue of one never raised"
    n, error = refused
    assert 2 <= n <= 3
    assert "auth.logged-in" in str(error)
    assert ran == list(range(1, n))
    assert bus.stats()["published"] == 0


def test_queue_full_drop_counts_and_never_raises(unreachable_bus: Callable[..., Bus]) -> None:
    bus = unreachable_bus(queue_full="drop", queue_size=1)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    ran: list[int] = []
    signal.connect(lambda sender, **kwargs: ran.append(kwargs["n"]), weak=False)
    for n in range(50):
        signal.send("web", n=n)
    assert ran == list(range(50))
    # Before the first failure shows Redis is away, a full queue waits for room: at most
    # three events get in (one taken by the thread, one queued, one let in after the
    # thread's first attempt failed); every other one is dropped at once.
    assert bus.stats()["dropped"] >= 47
    bus.close(timeout=0.3)
    # Never dropped in silence: what was still waiting at close is counted too.
    assert bus.stats()["dropped"] == 50
    assert bus.stats()["published"] == 0


# -- blinker's module-level API ----------------------------------------------------


def test_signal_is_the_same_signal_for_the_same_name_and_its_channel_is_the_name() -> None:
    made = signalbus.signal("test-module-level.made", doc="made once")
    assert signalbus.signal("test-module-level.made") is made
    assert signalbus.default_namespace.signal("test-module-level.made") is made
    assert isinstance(made, blinker.NamedSignal) and made.name == "test-module-level.made"
    assert made.channel == "test-module-level.made"
    assert made.channel == Namespace("test-module-level").signal("made").channel
    assert signalbus.signal("undotted").channel == "undotted"


def test_signal_reaches_a_namespace_signal_in_another_process(
    redis_url: str, prefix: str, start_child: Callable[..., Child]
) -> None:
    """``signal("auth.logged-in")`` here and ``Namespace("auth").signal("logged-in")`` in
    another process are one signal (tests/child.py listens on the latter)."""
    listener = start_child("listen", redis_url, prefix, "1")
    bus = configure(redis_url, prefix=prefix)
    try:
        signalbus.signal("auth.logged-in").send("web", n=7)
        assert bus.flush(10)
        wait_for(listener.events, timeout=20)
        assert [event["kwargs"] for event in listener.events()] == [{"n": 7}]
    finally:
        bus.close()
    assert listener.finish() == 0, listener.stderr()


def test_the_cli_sends_on_a_channel_without_a_dot(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    received = Recorder()
    Namespace("", bus=make_bus()).signal("heartbeat").connect(received)
    code, _, err = on_test_bus("send", "heartbeat", "--sender", "cli", "beat=1")
    assert code == 0, err
    assert received.wait(1) == [("cli", {"beat": 1})]
