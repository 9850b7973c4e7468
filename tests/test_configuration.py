"""Configuration that must fail loudly: a bad URL option, a client of a shape the bus
cannot use, a server that is a Redis Cluster node. Each is a ConfigurationError naming
what is wrong and what to do, never a raw TypeError or events lost in silence."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import fakeredis
import pytest
import redis
import redis.asyncio

from signalbus import Bus, ConfigurationError, Namespace

from .helpers import Recorder


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
