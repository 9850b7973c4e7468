"""Flask apps as they are really built: one app per test, apps side by side, an app
factory called again and again, in one process, with flask-login's signals bridged."""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import flask
import flask_login
import pytest
from flask_login import user_logged_in

import signalbus
from signalbus import Bus, Namespace
from signalbus.bus import default_bus
from signalbus.flask import SignalBus

from .child import BridgeUser
from .helpers import Child, Recorder, wait_for

auth = Namespace("tests.apps")
logged_in = auth.signal("logged-in")


@pytest.fixture
def make_app(redis_url: str, prefix: str) -> Iterator[Callable[..., flask.Flask]]:
    """An app factory, as a test suite has one; every bus it made is closed after."""
    made: list[flask.Flask] = []

    def make(name: str = "shop", **config: Any) -> flask.Flask:
        app = flask.Flask(name)
        app.config.update(SIGNALBUS_URL=redis_url, SIGNALBUS_PREFIX=prefix)
        app.config.update(config)
        SignalBus(app)
        made.append(app)
        return app

    yield make
    for bus in {id(b): b for b in map(bus_of, made)}.values():
        bus.close(timeout=5)


def bus_of(app: flask.Flask) -> Bus:
    with app.app_context():
        bus = app.extensions["signalbus"].bus
    assert isinstance(bus, Bus)
    return bus


def test_apps_with_the_same_settings_share_one_bus_and_the_first_keeps_working(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus]
) -> None:
    first = make_app()
    second = make_app()  # a second test's app, the first one not yet collected
    assert bus_of(first) is bus_of(second) and not bus_of(first).closed
    elsewhere = make_bus()
    heard = Recorder()
    Namespace("tests.apps", bus=elsewhere).signal("logged-in").connect(heard)
    with first.test_request_context():
        logged_in.send(first, user_id=1)  # the first app still travels as itself
    with second.test_request_context():
        logged_in.send(second, user_id=2)
    assert [(sender, kwargs["user_id"]) for sender, kwargs in heard.wait(2)] == [
        ("shop", 1),
        ("shop", 2),
    ]


def test_apps_with_another_prefix_each_send_on_their_own_bus(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus], prefix: str
) -> None:
    blue = make_app("blue")
    green = make_app("green", SIGNALBUS_PREFIX=prefix + "green:")
    assert bus_of(blue) is not bus_of(green)
    on_blue, on_green = Recorder(), Recorder()
    Namespace("tests.apps", bus=make_bus()).signal("logged-in").connect(on_blue)
    Namespace("tests.apps", bus=make_bus(prefix=prefix + "green:")).signal("logged-in").connect(
        on_green
    )
    with blue.app_context():
        logged_in.send(blue, user_id=1)
    with green.app_context():
        logged_in.send(green, user_id=2)
    logged_in.send("outside", user_id=3)  # outside any app: the app set up last
    assert [(s, k["user_id"]) for s, k in on_blue.wait(1)] == [("blue", 1)]
    assert [(s, k["user_id"]) for s, k in on_green.wait(2)] == [("green", 2), ("outside", 3)]
    assert default_bus() is bus_of(green)


def test_receivers_hear_every_apps_bus(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus], prefix: str
) -> None:
    make_app("blue")
    make_app("green", SIGNALBUS_PREFIX=prefix + "green:")
    heard = Recorder()
    with logged_in.connected_to(heard):
        for there in (prefix, prefix + "green:"):
            Namespace("tests.apps", bus=make_bus(prefix=there)).signal("logged-in").send(
                there, user_id=7
            )
        assert sorted(sender for sender, _ in heard.wait(2)) == sorted([prefix, prefix + "green:"])


def test_a_remote_receiver_runs_in_the_app_the_event_was_sent_as(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus]
) -> None:
    shop = make_app("shop")
    admin = make_app("admin")  # mounted beside it, on the same bus
    ran_in: list[tuple[Any, str]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        ran_in.append((sender, flask.current_app.name))

    other_worker = make_bus()
    apps_there = {name: object() for name in ("shop", "admin")}
    for name, app_there in apps_there.items():
        other_worker.register_sender(app_there, name)
    sending = Namespace("tests.apps", bus=other_worker).signal("logged-in")
    with logged_in.connected_to(receiver):
        sending.send(apps_there["shop"], user_id=1)
        sending.send(apps_there["admin"], user_id=2)
        sending.send("a script", user_id=3)
        wait_for(lambda: len(ran_in) == 3)
    # Not an app: in the app set up last.
    assert ran_in == [(shop, "shop"), (admin, "admin"), ("a script", "admin")]


def test_bridges_and_types_applied_again_change_nothing(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus]
) -> None:
    config = dict(
        SIGNALBUS_BRIDGE=[user_logged_in],
        SIGNALBUS_TYPES=[(BridgeUser, lambda user: user.id, lambda id: BridgeUser(id))],
    )
    apps = [make_app(**config) for _ in range(3)]
    bus = bus_of(apps[0])
    assert len(bus._bridges) == 1
    assert bus.bridge(user_logged_in) is bus._bridges[0]  # by hand too
    with pytest.raises(signalbus.ConfigurationError, match="bridged on channel"):
        bus.bridge(user_logged_in, channel="elsewhere.logged-in")
    elsewhere = make_bus()
    elsewhere.register_type(BridgeUser, lambda user: user.id, lambda id: BridgeUser(id))
    published = Recorder()
    Namespace("flask_login.signals", bus=elsewhere).signal("logged-in").connect(published)
    here = Recorder()
    with user_logged_in.connected_to(here):
        with apps[1].test_request_context():
            user_logged_in.send(apps[1], user=BridgeUser(5))  # published once
        Namespace("flask_login.signals", bus=elsewhere).signal("logged-in").send(
            "elsewhere", user=BridgeUser(6)
        )
        wait_for(lambda: len(here.calls) == 2 and len(published.calls) == 1)
        assert bus.flush(5) and elsewhere.flush(5)
        bus.close(timeout=5)  # whatever was on its way has arrived
    assert [kwargs["user"] for _, kwargs in here.calls] == [BridgeUser(5), BridgeUser(6)]
    assert [kwargs["user"] for _, kwargs in published.calls] == [BridgeUser(5)]


def test_no_fork_hook_piles_up(
    make_app: Callable[..., flask.Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **kwargs: hooks.append(kwargs))
    for _ in range(5):
        make_app(SIGNALBUS_BRIDGE=[user_logged_in])
    assert hooks == []


def test_a_bus_is_closed_once_its_apps_are_gone(
    make_app: Callable[..., flask.Flask], redis_url: str, prefix: str
) -> None:
    old = flask.Flask("old")
    old.config.update(SIGNALBUS_URL=redis_url, SIGNALBUS_PREFIX=prefix + "old:")
    SignalBus(old)
    old_bus = bus_of(old)
    del old
    gc.collect()  # a Flask app is a cycle
    new = make_app("new")
    assert old_bus.closed and not bus_of(new).closed


def test_other_options_for_the_same_url_and_prefix_replace_the_bus(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus]
) -> None:
    first = make_app("first")
    replaced = bus_of(first)
    second = make_app("second", SIGNALBUS_QUEUE_SIZE=50)
    assert replaced.closed and bus_of(first) is bus_of(second)
    heard = Recorder()
    Namespace("tests.apps", bus=make_bus()).signal("logged-in").connect(heard)
    with first.app_context():
        logged_in.send(first, user_id=1)  # the first app moved to the new bus
    assert [(s, k["user_id"]) for s, k in heard.wait(1)] == [("first", 1)]


def test_bridging_again_reads_no_module(
    make_app: Callable[..., flask.Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_app(SIGNALBUS_BRIDGE=[user_logged_in])
    read: list[Any] = []
    reading = signalbus.bridge._attributes
    monkeypatch.setattr(signalbus.bridge, "_attributes", lambda m: read.append(m) or reading(m))
    make_app("another", SIGNALBUS_PREFIX="elsewhere:", SIGNALBUS_BRIDGE=[user_logged_in])
    assert read == []


def test_apps_set_up_from_many_threads_at_once_share_one_bus(
    make_app: Callable[..., flask.Flask],
) -> None:
    start = threading.Barrier(8)
    apps: list[flask.Flask] = []

    def set_up() -> None:
        start.wait(5)
        apps.append(make_app(SIGNALBUS_BRIDGE=[user_logged_in]))

    threads = [threading.Thread(target=set_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(apps) == 8 and len({id(bus_of(app)) for app in apps}) == 1
    assert len(bus_of(apps[0])._bridges) == 1


def test_flask_logins_suite_pattern_a_new_app_per_test(
    make_app: Callable[..., flask.Flask], redis_url: str, prefix: str
) -> None:
    """flask-login's own suite makes ``Flask("test_login")`` in every test; each gets
    ``SignalBus(app)`` and its signals bridged, and another process hears every login
    once, with the user revived."""
    listener = Child("bridge", redis_url, prefix, "0")
    try:
        listener.wait_ready()
        for user_id in range(10):  # ten tests
            app = make_app(
                "test_login",
                SECRET_KEY="deterministic",
                SIGNALBUS_BRIDGE=[user_logged_in],
            )
            login_manager = flask_login.LoginManager(app)
            login_manager.user_loader(lambda id: BridgeUser(int(id)))

            @app.post("/login/<int:user_id>")
            def login(user_id: int) -> str:
                flask_login.login_user(BridgeUser(user_id))
                return "welcome"

            assert app.test_client().post(f"/login/{user_id}").text == "welcome"
        wait_for(lambda: len(listener.events()) == 10)
        assert listener.events() == [
            {"sender": "test_login", "user": n, "remote": True} for n in range(10)
        ]
    finally:
        listener.kill()


FLASKS_OWN = [
    flask.request_started,
    flask.request_finished,
    flask.template_rendered,
    flask.before_render_template,
    flask.got_request_exception,
    flask.appcontext_pushed,
    flask.appcontext_popped,
    flask.message_flashed,
]


def flask_shop(**config: Any) -> flask.Flask:
    app = flask.Flask("shop")
    app.config.update(SECRET_KEY="deterministic", **config)

    @app.get("/page")
    def page() -> str:
        flask.flash("hello")
        return flask.render_template_string("<p>{{ 1 + 1 }}</p>")

    @app.get("/broken")
    def broken() -> str:
        raise RuntimeError("a bug")

    return app


def requests_heard(app: flask.Flask, between: Callable[[], None]) -> list[int]:
    """How often each of Flask's own signals reached a receiver in two rounds of
    requests, with ``between`` run after the first; every request answered as usual."""
    here = {signal: Recorder() for signal in FLASKS_OWN}
    for signal, recorder in here.items():
        signal.connect(recorder)
    try:
        client = app.test_client()
        for round in range(2):
            assert client.get("/page").text == "<p>2</p>"
            assert client.get("/broken").status_code == 500
            if round == 0:
                between()
    finally:
        for signal, recorder in here.items():
            signal.disconnect(recorder)
    return [len(here[signal].calls) for signal in FLASKS_OWN]


def test_flasks_own_signals_bridged_under_its_test_client_with_redis_up_and_down(
    own_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Flask sends templates, responses and exceptions: none can travel, so each is
    delivered here only, counted and logged once in a while; what can travel does, and
    while Redis is away every request still gets its answer, its receivers run as
    without signalbus, and what could travel is published once Redis is back."""
    without_signalbus = requests_heard(flask_shop(), lambda: None)
    app = flask_shop(SIGNALBUS_URL=own_server.url, SIGNALBUS_BRIDGE=FLASKS_OWN)
    SignalBus(app)
    bus = bus_of(app)
    with Bus(own_server.url) as elsewhere:
        started = Recorder()
        Namespace("flask.signals", bus=elsewhere).signal("request-started").connect(started)

        def redis_goes_away() -> None:
            started.wait(2)  # request_started carries only the app: it travels
            own_server.stop()

        try:
            assert requests_heard(app, redis_goes_away) == without_signalbus
            assert bus.stats()["unsendable"] >= 8  # templates, responses, exceptions
            logged = [r for r in caplog.records if "in this process only" in r.message]
            assert 0 < len(logged) <= len(FLASKS_OWN)  # once in a while, per signal
            own_server.start()
            assert bus.flush(20)
            wait_for(lambda: len(started.calls) == 4, timeout=20)
            assert [sender for sender, _ in started.calls] == ["shop"] * 4
        finally:
            bus.close(timeout=5)


def test_the_app_context_a_remote_receiver_runs_in_publishes_nothing(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus]
) -> None:
    """Entering the app context sends ``appcontext_pushed``: bridged, each event received
    would publish two more, which other processes would receive in an app context of
    their own, and so on without end. What the receiver sends itself travels."""
    app = make_app(SIGNALBUS_BRIDGE=[flask.appcontext_pushed, flask.appcontext_popped])
    bus = bus_of(app)
    pushed = Recorder()
    flask.appcontext_pushed.connect(pushed, weak=False)
    elsewhere = make_bus()
    heard_elsewhere = Recorder()
    Namespace("flask.signals", bus=elsewhere).signal("appcontext-pushed").connect(heard_elsewhere)

    def receiver(sender: Any, **kwargs: Any) -> None:
        if kwargs["user_id"] == 2:
            with app.app_context():  # the receiver's own: travels
                pass

    try:
        with logged_in.connected_to(receiver):
            assert bus.flush(5)
            published = bus.stats()["published"]
            sending = Namespace("tests.apps", bus=elsewhere).signal("logged-in")
            sending.send("elsewhere", user_id=1)
            sending.send("elsewhere", user_id=2)
            wait_for(lambda: len(pushed.calls) == 3)  # two events' contexts, and one more
            assert bus.flush(5)
            assert bus.stats()["published"] == published + 2  # the receiver's push and pop
            assert [sender for sender, _ in heard_elsewhere.wait(1)] == ["shop"]
    finally:
        flask.appcontext_pushed.disconnect(pushed)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("SIGNALBUS_BRIDGE", user_logged_in),  # one signal where a list was meant
        ("SIGNALBUS_BRIDGE", "flask_login.user_logged_in"),
        ("SIGNALBUS_TYPES", (BridgeUser, lambda user: user.id, BridgeUser)),  # one, unlisted
    ],
)
def test_a_setting_of_the_wrong_shape_fails_init_app(
    redis_url: str, prefix: str, option: str, value: Any
) -> None:
    """Taken apart, one signal raised blinker's TypeError, a str bridged each character,
    and one registration registered its class's attributes."""
    app = flask.Flask("shop")
    app.config.update(SIGNALBUS_URL=redis_url, SIGNALBUS_PREFIX=prefix, **{option: value})
    with pytest.raises(signalbus.ConfigurationError, match=f"{option} must be a list of"):
        SignalBus(app)
    assert "signalbus" not in app.extensions


def test_closing_buses_from_many_threads_leaves_no_closed_default(
    redis_url: str, prefix: str
) -> None:
    """Buses become defaults and close from any thread: the list of default buses is
    read, changed and written back, and two threads at once could each write back a
    list still holding the other's bus, closed; signals would then travel on it."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave as often as Python lets them
    start = threading.Barrier(8)

    def churn() -> None:
        start.wait(5)
        for _ in range(20):
            bus = Bus(redis_url, prefix=prefix, catalog=False)
            signalbus.bus.add_default(bus)
            bus.close(timeout=1)

    try:
        threads = [threading.Thread(target=churn) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert [bus for bus in signalbus.bus.default_buses() if bus.closed] == []
