"""The Flask extension in-process: configuration, the app as a sender, receivers in an
application context, the flask commands, and what Redis being away does to a request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
from flask_login import user_logged_in

import signalbus
from signalbus import Bus, ConfigurationError, Namespace
from signalbus.flask import SignalBus

from .helpers import wait_for

auth = Namespace("tests.flask")
logged_in = auth.signal("logged-in")


@pytest.fixture
def make_app(prefix: str) -> Iterator[Callable[..., flask.Flask]]:
    made: list[SignalBus] = []

    def make(url: str, **config: Any) -> flask.Flask:
        app = flask.Flask("shop")
        app.config.update(SIGNALBUS_URL=url, SIGNALBUS_PREFIX=prefix, **config)
        made.append(SignalBus(app))
        return app

    yield make
    for extension in made:
        if extension.bus is not None:
            extension.bus.close(timeout=5)


def test_remote_events_arrive_from_the_app_inside_its_context(
    make_app: Callable[..., flask.Flask], make_bus: Callable[..., Bus], redis_url: str
) -> None:
    app = make_app(redis_url)
    seen: list[tuple[Any, str, int]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append((sender, flask.current_app.name, kwargs["user_id"]))

    with logged_in.connected_to(receiver, sender=app):  # connect_via(app) works across processes
        other_worker = make_bus()
        app_elsewhere = object()  # the same app, as another worker has it
        other_worker.register_sender(app_elsewhere, "shop")
        Namespace("tests.flask", bus=other_worker).signal("logged-in").send(
            app_elsewhere, user_id=7
        )
        wait_for(lambda: seen)
    assert seen == [(app, "shop", 7)]


def test_flask_signalbus_commands_use_the_apps_settings(
    make_app: Callable[..., flask.Flask], redis_url: str
) -> None:
    app = make_app(redis_url)
    got: list[int] = []
    with logged_in.connected_to(lambda sender, **kwargs: got.append(kwargs["user_id"])):
        runner = app.test_cli_runner()
        result = runner.invoke(args=["signalbus", "ping"])
        assert result.exit_code == 0 and "answers" in result.output
        result = runner.invoke(args=["signalbus", "send", "tests.flask.logged-in", "user_id=5"])
        assert result.exit_code == 0, result.output
        wait_for(lambda: got == [5])
        result = runner.invoke(args=["signalbus", "history", "tests.flask.logged-in"])
        assert "user_id=5" in result.output


def test_a_request_goes_on_when_redis_is_away(
    make_app: Callable[..., flask.Flask], unreachable_url: str
) -> None:
    app = make_app(unreachable_url, SIGNALBUS_QUEUE_SIZE=2, SIGNALBUS_CLOSE_TIMEOUT=0.2)
    local: list[int] = []

    @app.post("/login/<int:user_id>")
    def login(user_id: int) -> str:
        logged_in.send(app, user_id=user_id)
        return "welcome"

    # More events than the queue (2) and what the publisher holds to retry (a batch
    # taken before Redis was known to be away) can keep between them.
    with logged_in.connected_to(lambda sender, **kwargs: local.append(kwargs["user_id"])):
        client = app.test_client()
        for user_id in range(20):
            assert client.post(f"/login/{user_id}").text == "welcome"
    assert local == list(range(20))  # the local receivers ran, in the request
    bus = app.extensions["signalbus"].bus
    wait_for(lambda: bus.stats()["dropped"] >= 1)  # past the queue: dropped, counted


def test_configuration_errors_fail_at_startup(prefix: str) -> None:
    app = flask.Flask("shop")
    app.config.update(SIGNALBUS_URL="http://nowhere", SIGNALBUS_PREFIX=prefix)
    with pytest.raises(ConfigurationError, match="bad Redis URL"):
        SignalBus(app)
    app.config.update(SIGNALBUS_URL="redis://localhost:1/0?socket_timout=5")
    with pytest.raises(ConfigurationError, match="did you mean 'socket_timeout'"):
        SignalBus(app)
    app.config.update(SIGNALBUS_URL="redis://localhost:1/0", SIGNALBUS_QUEUE_FULL="sometimes")
    with pytest.raises(ConfigurationError, match="queue_full"):
        SignalBus(app)
    app.config.update(SIGNALBUS_QUEUE_FULL="drop", SIGNALBUS_SIGNING_KEYS="secret")
    with pytest.raises(ConfigurationError, match="signing_keys: key 1 is only 6 bytes long"):
        SignalBus(app)


def test_a_signing_key_in_the_config_is_one_key(
    make_app: Callable[..., flask.Flask], redis_url: str
) -> None:
    app = make_app(redis_url, SIGNALBUS_SIGNING_KEYS="one key, though it has a comma")
    assert len(app.extensions["signalbus"].bus.codec.signer.keys) == 1


def test_signals_listed_in_the_config_are_bridged(
    make_app: Callable[..., flask.Flask], redis_url: str
) -> None:
    app = make_app(redis_url, SIGNALBUS_BRIDGE=[user_logged_in])
    bus = app.extensions["signalbus"].bus
    assert [s.channel for s in bus._bridges] == ["flask_login.signals.logged-in"]
    assert isinstance(bus, signalbus.Bus)


def test_every_bus_option_is_read_from_the_config(
    make_app: Callable[..., flask.Flask], redis_url: str, raw: Any, prefix: str
) -> None:
    quiet = make_app(redis_url, SIGNALBUS_CATALOG=False)
    Namespace("tests.flask", bus=quiet.extensions["signalbus"].bus).signal("unrecorded")
    loud = make_app(redis_url)
    Namespace("tests.flask", bus=loud.extensions["signalbus"].bus).signal("recorded")
    wait_for(lambda: raw.hexists(f"{prefix}signalbus:catalog", "tests.flask.recorded"))
    quiet.extensions["signalbus"].bus.close()
    recorded = raw.hkeys(f"{prefix}signalbus:catalog")
    assert b"tests.flask.recorded" in recorded and b"tests.flask.unrecorded" not in recorded
