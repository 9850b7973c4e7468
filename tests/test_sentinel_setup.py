"""testing.SentinelSetup, the harness issue 13's Sentinel tests run on: it starts, the
sentinels agree, a client that asks them can write, and both kinds of failover end with
the replica promoted within seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from signalbus.testing import SentinelSetup


@pytest.fixture
def setup() -> Iterator[SentinelSetup]:
    with SentinelSetup() as started:
        yield started


@pytest.fixture
def master_for(setup: SentinelSetup) -> Iterator[Callable[[], redis.Redis]]:
    """Make clients of the master that the sentinels name when they connect; all
    closed at teardown. A new one after a failover: a client's pooled connections
    stay where they were."""
    made: list[redis.Redis] = []

    def make() -> redis.Redis:
        sentinel = setup.sentinel_client(socket_timeout=5)
        made.extend([*sentinel.sentinels, sentinel.master_for(setup.service)])
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.mark.slow
def test_the_sentinels_agree_on_the_master_and_a_client_through_them_writes(
    setup: SentinelSetup, master_for: Callable[[], redis.Redis]
) -> None:
    assert setup.current_master() is setup.master
    ports = [port for _host, port in setup.sentinel_addresses]
    assert len(set(ports)) == 3
    assert setup.url == (
        f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},"
        f"127.0.0.1:{ports[2]}/0/signalbus"
    )
    client = master_for()
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    with setup.master.client() as direct:
        assert direct.get("greeting") == b"hello"


@pytest.mark.slow
def test_a_planned_failover_promotes_the_replica(
    setup: SentinelSetup, master_for: Callable[[], redis.Redis]
) -> None:
    writer = master_for()
    writer.set("before", "1")
    assert writer.wait(1, 5000) == 1  # on the replica too, or the failover loses it
    assert setup.failover(timeout=15) is setup.replica
    assert setup.current_master() is setup.replica
    client = master_for()
    assert client.get("before") == b"1"
    client.set("after", "2")
    with setup.replica.client() as direct:
        assert direct.get("after") == b"2"


@pytest.mark.slow
def test_a_killed_master_is_replaced_within_seconds(
    setup: SentinelSetup, master_for: Callable[[], redis.Redis]
) -> None:
    started = time.monotonic()
    assert setup.kill_master(timeout=15) is setup.replica
    assert time.monotonic() - started < 15
    with setup.master.client() as killed, pytest.raises(redis.ConnectionError):
        killed.ping()
    client = master_for()
    client.set("after", "2")
    assert client.get("after") == b"2"


def test_a_start_up_that_fails_half_way_stops_what_it_started() -> None:
    setup = SentinelSetup(down_after_ms=0)  # master and replica start; sentinels refuse 0
    with pytest.raises(RuntimeError, match="zero time parameter"), setup:
        pass
    for server in (setup.master, setup.replica):
        with server.client() as client, pytest.raises(redis.ConnectionError):
            client.ping()
