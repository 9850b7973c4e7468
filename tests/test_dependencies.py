"""What signalbus takes from its dependencies beyond their documented APIs, checked so
that a release that changes it fails here, loudly, rather than in a user's process.

redis-py: signalbus drives its own connections (``signalbus.transport`` is the one
module that does), writing pipelined commands itself and reading replies one by one,
and shuts a reader's socket down to wake it. blinker: a receiver's id, and the one
method every disconnection passes through (``signalbus.signals``).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import socket
import tomllib
from collections.abc import Callable

import blinker
import pytest
import redis
from blinker import _utilities as blinker_utilities
from packaging.requirements import Requirement

from signalbus import Bus, __version__

from .helpers import ROOT


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_redis_connection_methods_the_transport_drives(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url).connection_pool.make_connection()
    assert {"command", "check_health"} <= set(parameters(connection.send_packed_command))
    assert "disconnect_on_error" in parameters(connection.read_response)
    assert "timeout" in parameters(connection.can_read)
    assert connection.pack_command(b"PING") and connection.pack_commands([(b"PING",)])
    connection.connect()
    try:
        assert connection.is_connected
        assert isinstance(connection._sock, socket.socket)  # what interrupt() shuts down
        connection.send_packed_command(connection.pack_command(b"PING"), check_health=False)
        assert connection.can_read(timeout=5)
        assert connection.read_response(disconnect_on_error=False) in (b"PONG", "PONG")
    finally:
        connection.disconnect()
    assert not connection.is_connected


def test_the_redis_pool_settings_a_bus_copies() -> None:
    pool = redis.Redis.from_url("redis://localhost:1/0?socket_timeout=3").connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 3
    check = pool.connection_class(redis_connect_func=print).redis_connect_func
    assert check is print  # called on every new connection: signalbus's ServerCheck
    owned = redis.Redis.from_pool(redis.ConnectionPool())
    assert owned.auto_close_connection_pool  # close() closes its connections


def test_the_blinker_internals_signals_override() -> None:
    def receiver(sender: object) -> None:
        del sender

    assert blinker_utilities.make_id(receiver) == id(receiver)
    assert parameters(blinker.Signal._disconnect) == ["self", "receiver_id", "sender_id"]
    signal = blinker.Signal()
    seen: list[object] = []
    original = signal._disconnect

    def spy(receiver_id: object, sender_id: object) -> None:
        seen.append(receiver_id)
        original(receiver_id, sender_id)

    signal._disconnect = spy  # type: ignore[method-assign]
    signal.connect(receiver)
    signal.disconnect(receiver)
    assert seen == [id(receiver)]


def declared() -> dict[str, Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    return {Requirement(text).name: Requirement(text) for text in dependencies}


@pytest.mark.parametrize("name", sorted(declared()))
def test_the_installed_dependencies_are_within_the_ranges_the_project_states(name: str) -> None:
    """The ranges in pyproject.toml are the ones tested: what runs here must be in them,
    and each has an upper bound (a major release may change what signalbus relies on)."""
    requirement = declared()[name]
    installed = importlib.metadata.version(name)
    assert requirement.specifier.contains(installed), f"{name} {installed} is outside {requirement}"
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{requirement}: no bound"


def test_a_bus_names_itself_to_the_server(make_bus: Callable[..., Bus]) -> None:
    """Its connections say ``redis-py(signalbus_v...)`` (CLIENT SETINFO, Redis 7.2+), and
    redis-py, told who it is, reads no package metadata for each connection."""
    bus = make_bus()
    connection = bus._commands.connection_pool.make_connection()
    assert connection.driver_info.formatted_name == f"redis-py(signalbus_v{__version__})"
    connection.disconnect()
