"""Configuration that must fail loudly: a bad URL option, a client of a shape the bus
cannot use, a server that is a Redis Cluster node. Each is a ConfigurationError naming
what is wrong and what to do, never a raw TypeError or events lost in silence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from signalbus import Bus, ConfigurationError


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
