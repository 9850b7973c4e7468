"""Configuration that must fail loudly: a bad URL option, a client of a shape the bus
cannot use, a server that is a Redis Cluster node. Each is a ConfigurationError naming
what is wrong and what to do, never a raw TypeError or events lost in silence."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import fakeredis
import pytest
import redis
import redis.asyncio

from signalbus import Bus, ConfigurationError, Namespace
from signalbus.keyspace import stream_key
from signalbus.testing import RedisServer

from .helpers import Recorder, wait_for


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("socket_timout=5", "unknown option 'socket_timout'; did you mean 'socket_timeout'[?]"),
        ("retry_on_timeot=true", "unknown option 'retry_on_timeot'; did you mean"),
        ("colour=blue", "unknown option 'colour' [(]see redis-py's Connection[)]"),
        ("ssl_cert_reqs=none", "'ssl_cert_reqs': it is for rediss:// URLs [(]TLS[)] only"),
        ("socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("protocol=7", "protocol must be either 2 or 3"),
    ],
)
def test_a_bad_url_option_is_named_when_the_bus_is_made(
    make_bus: Callable[..., Bus], unreachable_url: str, query: str, error: str
) -> None:
    url = unreachable_url.replace("redis://", "redis://ops:s3cret@")
    with pytest.raises(ConfigurationError, match=f"^bad Redis URL 'redis://ops:[*]+@.*{error}"):
        make_bus(f"{url}?{query}")


def test_the_options_redis_py_documents_are_taken(
    make_bus: Callable[..., Bus], unreachable_url: str
) -> None:
    query = "socket_timeout=5&max_connections=3&client_name=web&health_check_interval=10"
    bus = make_bus(f"{unreachable_url}?{query}")
    assert bus.client.connection_pool.connection_kwargs["client_name"] == "web"


def test_sentinel_and_cluster_urls_say_they_are_not_supported_yet(
    make_bus: Callable[..., Bus],
) -> None:
    for url in ("redis+sentinel://127.0.0.1:1/0/main", "redis+cluster://127.0.0.1:1,127.0.0.1:2"):
        with pytest.raises(ConfigurationError, match="Sentinel and Cluster are not supported yet"):
            make_bus(url)


def test_a_client_that_decodes_responses_works_everywhere(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str
) -> None:
    """The bus takes only the client's settings: its own connections get bytes, so a
    decode_responses client delivers, keeps history, replays and runs groups."""
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    bus, other = make_bus(client=decoding), make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    heard, in_group = Recorder(), Recorder()
    signal.connect(heard, weak=False)
    signal.connect(in_group, weak=False, group="mailer")
    Namespace("auth", bus=other).signal("logged-in").send("web", n=1)
    assert heard.wait(1) == [("web", {"n": 1})]
    assert in_group.wait(1) == [("web", {"n": 1})]
    signal.send("api", n=2)
    assert bus.flush(10)
    assert [event.kwargs for event in signal.history()] == [{"n": 1}, {"n": 2}]
    assert [status.name for status in signal.group_status()] == ["mailer"]
    assert list(signal.dead_letters("mailer")) == []
    assert signal.replay(since="0-0", dry_run=True).events == 2
    assert bus.stats()["invalid"] == 0
    decoding.close()


@pytest.mark.parametrize(
    ("make_client", "error"),
    [
        (
            lambda url: redis.Sentinel([("127.0.0.1", urlsplit(url).port)]).master_for("main"),
            "client= is a Sentinel client .master_for.: signalbus does not support Sentinel yet",
        ),
        (
            redis.asyncio.Redis.from_url,
            "client= must be a redis.Redis .a synchronous one.*, not redis.asyncio.client.Redis;",
        ),
        (
            lambda url: fakeredis.FakeAsyncRedis(),
            "must be a redis.Redis .*, not fakeredis.*FakeRedis; or pass url= instead",
        ),
        (lambda url: url, "client= must be a redis.Redis .*, not builtins.str"),
    ],
)
def test_a_client_the_bus_cannot_use_is_refused_when_the_bus_is_made(
    make_bus: Callable[..., Bus],
    unreachable_url: str,
    make_client: Callable[[str], object],
    error: str,
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        make_bus(client=make_client(unreachable_url))


def test_a_fakeredis_client_that_decodes_responses_works(prefix: str) -> None:
    server = fakeredis.FakeServer()
    buses = [
        Bus(
            client=fakeredis.FakeRedis(server=server, decode_responses=True),
            prefix=prefix,
            history=False,  # fakeredis runs no Lua
        )
        for _ in range(2)
    ]
    try:
        heard = Recorder()
        Namespace("auth", bus=buses[0]).signal("logged-in").connect(heard, weak=False)
        Namespace("auth", bus=buses[1]).signal("logged-in").send("web", n=1)
        assert heard.wait(1) == [("web", {"n": 1})]
    finally:
        for bus in buses:
            bus.close(timeout=5)


# -- a Redis Cluster node behind a redis:// URL --------------------------------------------

REFUSAL = "is a Redis Cluster node .{}.: signalbus does not support Redis Cluster yet"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    """Two Redis Cluster nodes that met, each serving half the slots: what a redis://
    URL to one node of a real cluster finds."""
    with contextlib.ExitStack() as stack:
        bus_ports = [_free_port() for _ in range(2)]  # gossip: not port + 10000, maybe > 65535
        nodes = [
            stack.enter_context(
                RedisServer(
                    [
                        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                        *("--cluster-port", str(bus_port)),
                    ]
                )
            )
            for bus_port in bus_ports
        ]
        clients = [stack.enter_context(contextlib.closing(node.client())) for node in nodes]
        clients[0].execute_command("CLUSTER ADDSLOTSRANGE", 0, 8191)
        clients[1].execute_command("CLUSTER ADDSLOTSRANGE", 8192, 16383)
        clients[0].execute_command("CLUSTER MEET", "127.0.0.1", nodes[1].port, bus_ports[1])
        wait_for(lambda: all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients))
        yield nodes


def test_a_cluster_node_is_refused_and_nothing_counts_as_published(
    make_bus: Callable[..., Bus], cluster: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Before, 4 of 5 signals' events were refused with MOVED, counted only as dropped,
    and flush() returned True. Now the bus's first connection finds the cluster."""
    bus = make_bus(cluster[0].url, catalog=False)  # made while connecting to nothing
    signals = [Namespace("auth", bus=bus).signal(f"signal-{n}") for n in range(5)]
    signals[0].send("web", n=0)  # queued; the publisher thread connects
    with pytest.raises(ConfigurationError, match=REFUSAL.format("its INFO says cluster_enabled:1")):
        bus.flush(10)
    for signal in signals:
        with pytest.raises(ConfigurationError, match=f"^signal '{signal.channel}': Redis at"):
            signal.send("web", n=1)
    recorder = Recorder()
    with pytest.raises(ConfigurationError, match=REFUSAL.format(".*")):
        signals[0].connect(recorder)
    assert not signals[0].receivers
    assert (bus.stats()["published"], bus.stats()["dropped"]) == (0, 1)
    said = [r.getMessage() for r in caplog.records if "Redis Cluster" in r.getMessage()]
    assert len([m for m in said if m.startswith("signalbus: Redis at")]) == 1  # once
    assert [m for m in said if m.startswith("gave up 1 events")]  # the event, logged as lost


def test_a_receiver_on_a_cluster_node_is_refused_at_connect(
    make_bus: Callable[..., Bus], cluster: list[RedisServer]
) -> None:
    bus = make_bus(cluster[0].url, subscribe_timeout=30)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    with pytest.raises(
        ConfigurationError, match=f"^signal 'auth.logged-in': .*{REFUSAL.format('.*')}"
    ):
        signal.connect(Recorder())  # at once: the reader stops waiting when it finds out
    with pytest.raises(ConfigurationError, match=REFUSAL.format(".*")):
        list(signal.history())


def test_a_synchronous_send_to_a_cluster_node_raises(
    make_bus: Callable[..., Bus], cluster: list[RedisServer]
) -> None:
    bus = make_bus(cluster[0].url, synchronous=True, catalog=False)
    signal = Namespace("auth", bus=bus).signal("logged-in")
    with pytest.raises(ConfigurationError, match=REFUSAL.format(".*")):
        signal.send("web", n=1)
    assert bus.stats()["published"] == 0


def test_a_cluster_node_that_forbids_info_is_found_by_its_moved_reply(
    make_bus: Callable[..., Bus], cluster: list[RedisServer], prefix: str
) -> None:
    """A user whose ACL forbids INFO cannot ask; the MOVED reply to the history script
    for a key the other node serves tells instead."""
    with contextlib.closing(cluster[0].client()) as admin:
        admin.acl_setuser(
            "app", enabled=True, passwords=["+app-password-2026"], keys="*", channels="*",
            commands=["+@all", "-info"],
        )  # fmt: skip
    url = cluster[0].url.replace("redis://", "redis://app:app-password-2026@")
    bus = make_bus(url, catalog=False)
    name = next(
        f"elsewhere-{n}"
        for n in range(100)
        if redis.crc.key_slot(stream_key(prefix, f"auth.elsewhere-{n}")) > 8191
    )
    Namespace("auth", bus=bus).signal(name).send("web", n=1)
    moved = REFUSAL.format("it replied with a MovedError: [0-9]+ 127.0.0.1:[0-9]+")
    with pytest.raises(ConfigurationError, match=moved):
        bus.flush(10)
    assert (bus.stats()["published"], bus.stats()["dropped"]) == (0, 1)


def test_a_cluster_client_is_refused_when_the_bus_is_made(
    make_bus: Callable[..., Bus], cluster: list[RedisServer]
) -> None:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    try:
        with pytest.raises(
            ConfigurationError,
            match=r"client= is a redis\.RedisCluster: signalbus does not support Redis Cluster yet",
        ):
            make_bus(client=client)
    finally:
        client.close()
