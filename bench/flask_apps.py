"""What signalbus costs a Flask test suite that makes one app per test.

    .venv/bin/python bench/flask_apps.py        (or: make bench-flask)

A "test" is what flask-login's own suite does in each of its tests: make
``Flask("test_login")`` and a ``LoginManager``, log a user in through the test client.
The same tests run three ways in one process, on a private Redis server: without
signalbus; with ``SignalBus(app)`` and flask-login's and Flask's own signals bridged
(``SIGNALBUS_BRIDGE``); and the latter with a new prefix per test (a bus per app). It
prints the median cost of ``init_app`` and each way's wall time against the plain one.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import time
from typing import Any

import flask
import flask_login

from signalbus.bus import default_buses
from signalbus.flask import SignalBus
from signalbus.testing import RedisServer

TESTS = 300
BRIDGED = [
    flask_login.user_logged_in,
    flask_login.user_loaded_from_cookie,
    flask.request_started,
    flask.request_finished,
    flask.template_rendered,
    flask.got_request_exception,
]


@dataclasses.dataclass
class User(flask_login.UserMixin):  # type: ignore[misc]
    id: int


def one_test(n: int, config: dict[str, Any] | None, init_times: list[float]) -> None:
    app = flask.Flask("test_login")
    app.config.update(SECRET_KEY="deterministic", TESTING=True)
    login_manager = flask_login.LoginManager(app)
    login_manager.user_loader(lambda user_id: User(int(user_id)))

    @app.post("/login/<int:user_id>")
    def login(user_id: int) -> str:
        flask_login.login_user(User(user_id))
        return "welcome"

    if config is not None:
        app.config.update(
            {key: value(n) if callable(value) else value for key, value in config.items()}
        )
        started = time.perf_counter()
        SignalBus(app)
        init_times.append(time.perf_counter() - started)
    assert app.test_client().post(f"/login/{n}").text == "welcome"


def suite(config: dict[str, Any] | None) -> tuple[float, list[float]]:
    init_times: list[float] = []
    gc.collect()
    started = time.perf_counter()
    for n in range(TESTS):
        one_test(n, config, init_times)
    return time.perf_counter() - started, init_times


def main() -> None:
    logging.getLogger("signalbus").setLevel(logging.ERROR)  # Flask's Response cannot travel
    with RedisServer() as server:
        ways: dict[str, dict[str, Any] | None] = {
            "plain Flask": None,
            "SignalBus, bridged": dict(SIGNALBUS_URL=server.url, SIGNALBUS_BRIDGE=BRIDGED),
            "SignalBus, bridged, a prefix per test": dict(
                SIGNALBUS_URL=server.url,
                SIGNALBUS_BRIDGE=BRIDGED,
                SIGNALBUS_PREFIX=lambda n: f"test{n}:",
            ),
        }
        suite(None)  # warm up: imports, the first app
        results = {name: suite(config) for name, config in ways.items()}
        for bus in default_buses():
            bus.close()
    plain = results["plain Flask"][0]
    print(f"{TESTS} tests, each making its app (flask-login's suite pattern)")
    print(f"{'way':<40} {'wall s':>8} {'x plain':>8} {'init_app ms (median, max)':>28}")
    for name, (wall, init_times) in results.items():
        init = (
            f"{statistics.median(init_times) * 1000:.2f}, {max(init_times) * 1000:.1f}"
            if init_times
            else "-"
        )
        print(f"{name:<40} {wall:>8.2f} {wall / plain:>8.2f} {init:>28}")


if __name__ == "__main__":
    main()
