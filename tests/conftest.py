"""Fixtures in the manner of redis-py's: a private server by default, a unique channel
prefix per test, buses closed in finalizers. ``--redis-url`` points the suite at a
server of your own instead (fault tests still start their own)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from signalbus import Bus, history_gap
from signalbus.testing import RedisServer

from .helpers import Child, run_cli


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        help="use this Redis server instead of starting a private one",
    )


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = request.config.getoption("--redis-url")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test server."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """A channel prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def make_bus(redis_url: str, prefix: str) -> Iterator[Callable[..., Bus]]:
    """Make buses on the test server with this test's prefix; all closed at teardown."""
    buses: list[Bus] = []

    def make(url: str | None = None, **options: Any) -> Bus:
        options.setdefault("prefix", prefix)
        bus = Bus(url or redis_url, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close(timeout=5)


@pytest.fixture
def unreachable_url() -> Iterator[str]:
    """A Redis URL on a loopback port this test holds bound but never listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{held.getsockname()[1]}/0"


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, which it may stop and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def on_test_bus(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str
) -> Callable[..., tuple[int, str, str]]:
    """``signalbus --url <the test server> --prefix <this test's> *args``, as ``run_cli``."""
    return lambda *args: run_cli(capsys, "--url", redis_url, "--prefix", prefix, *args)


@pytest.fixture
def start_child() -> Iterator[Callable[..., Child]]:
    """Start ``python -m tests.child *args`` (see tests/child.py), waiting until it is
    ready unless ``ready=False``; every child is killed at teardown."""
    started: list[Child] = []

    def start(*args: str, ready: bool = True) -> Child:
        child = Child(*args)
        started.append(child)
        if ready:
            child.wait_ready()
        return child

    yield start
    for child in started:
        child.kill()


@pytest.fixture
def gaps() -> Iterator[list[dict[str, Any]]]:
    """What ``signalbus.history_gap`` reports while the test runs: its keyword
    arguments, with the sending bus as ``bus``."""
    reported: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        reported.append({"bus": sender, **kwargs})

    with history_gap.connected_to(receiver):
        yield reported


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port whose listener takes connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
