"""pytest fixtures for applications that use signalbus, loaded once signalbus is installed.

- ``signalbus_server``: a private Redis server for the test session (see
  :class:`signalbus.testing.RedisServer`).
- ``signalbus_bus``: a bus on it with a channel prefix of the test's own, made the
  default bus (so ``Namespace()`` signals use it) and closed afterwards.
- ``signalbus_fake_bus``: the same on fakeredis, for fast unit tests (no history:
  fakeredis runs no Lua; no second process either).

Use :func:`signalbus.testing.capture` to record what a signal delivers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .bus import Bus, configure
from .testing import RedisServer

__all__ = ["signalbus_bus", "signalbus_fake_bus", "signalbus_server"]


@pytest.fixture(scope="session")
def signalbus_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def signalbus_bus(signalbus_server: RedisServer) -> Iterator[Bus]:
    bus = configure(signalbus_server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
    yield bus
    bus.close(timeout=5)


@pytest.fixture
def signalbus_fake_bus() -> Iterator[Bus]:
    import fakeredis  # a test dependency, wanted only by those who ask for this fixture

    bus = configure(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), history=False)
    yield bus
    bus.close(timeout=5)
