"""``rediss://`` with a CA file, against a server that speaks TLS only: events, history
and the command line work through it, a wrong CA is refused with the reason, and
nothing falls back to plaintext."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

from signalbus import Bus, Namespace, PublishError
from signalbus.testing import RedisServer, make_tls_files

from .helpers import Recorder, run_cli, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed: it makes the test CA"
)

REFUSED = "certificate verify failed"
"""OpenSSL's words for a server certificate that no trusted CA signed."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One TLS-only server for the module, trusting a CA made for it."""
    server = RedisServer(tls=make_tls_files(tmp_path_factory.mktemp("tls")))
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        if "Bad directive" in str(exc) and "tls-port" in str(exc):
            pytest.skip(f"{server.binary} was built without TLS: {exc}")
        raise
    yield server
    server.close()


@pytest.fixture(scope="module")
def wrong_ca_url(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The server's URL, trusting an unrelated CA instead of the one that signed it."""
    unrelated = make_tls_files(tmp_path_factory.mktemp("unrelated"), common_name="unrelated CA")
    query = urlencode({"ssl_ca_certs": unrelated.ca})
    return urlunsplit(urlsplit(server.url)._replace(query=query))


def listen(bus: Bus) -> Recorder:
    recorder = Recorder()
    Namespace("tls", bus=bus).signal("ping").connect(recorder, weak=False)
    return recorder


def send(bus: Bus, n: int) -> None:
    Namespace("tls", bus=bus).signal("ping").send("web", n=n)
    assert bus.flush(10)


def test_the_server_has_no_plaintext_port(server: RedisServer) -> None:
    client = server.client()
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("tls-port") == {"tls-port": str(server.port)}
    finally:
        client.close()


def test_events_and_history_travel_over_tls(
    make_bus: Callable[..., Bus], server: RedisServer
) -> None:
    # With no plaintext port, delivery proves that both of a bus's connections
    # (publisher and subscriber) and its history reads speak TLS.
    recorder = listen(make_bus(server.url))
    sender_bus = make_bus(server.url)
    send(sender_bus, 1)
    assert recorder.wait(1) == [("web", {"n": 1})]
    kept = Namespace("tls", bus=sender_bus).signal("ping").history()
    assert [(event.sender, event.kwargs) for event in kept] == [("web", {"n": 1})]


def test_the_cli_works_over_tls(
    make_bus: Callable[..., Bus],
    server: RedisServer,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "--url", server.url, "ping")
    assert code == 0 and "answers" in out
    recorder = listen(make_bus(server.url))
    options = ["--url", server.url, "--prefix", prefix]
    assert run_cli(capsys, *options, "send", "tls.ping", "--sender", "cli", "n=1")[0] == 0
    assert recorder.wait(1) == [("cli", {"n": 1})]
    code, out, _ = run_cli(capsys, *options, "history", "tls.ping", "--json")
    assert code == 0
    assert [(event["sender"], event["kwargs"]) for event in map(json.loads, out.splitlines())] == [
        ("cli", {"n": 1})
    ]


def refused_bus(url: str, prefix: str) -> Bus:
    """A synchronous bus on ``url``, which cannot connect: it has nothing to flush, so
    closing it need not wait."""
    return Bus(url, prefix=prefix, synchronous=True, subscribe_timeout=0.1, close_timeout=0.1)


def test_a_wrong_ca_is_refused_with_the_reason_and_nothing_gets_through(
    make_bus: Callable[..., Bus],
    server: RedisServer,
    wrong_ca_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = listen(make_bus(server.url))
    with refused_bus(wrong_ca_url, prefix) as bus:
        with pytest.raises(PublishError, match=REFUSED):
            send(bus, 1)
        listen(bus)  # a receiver does not raise: the bus logs why, and keeps trying
        wait_for(lambda: REFUSED in caplog.text)
    code, out, err = run_cli(capsys, "--url", wrong_ca_url, "ping")
    assert (code, out) == (1, "")
    assert "cannot reach" in err and REFUSED in err
    client = server.client()
    try:
        assert client.xlen(f"{prefix}signalbus:history:tls.ping") == 0  # nothing kept
    finally:
        client.close()
    send(make_bus(server.url), 2)
    assert recorder.wait(1) == [("web", {"n": 2})]  # once it is in, the first was never sent


def test_a_plaintext_url_to_the_tls_port_fails(
    server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = urlunsplit(urlsplit(server.url)._replace(scheme="redis", query=""))
    with refused_bus(plain, prefix) as bus, pytest.raises(PublishError):
        send(bus, 1)
    code, out, err = run_cli(capsys, "--url", plain, "ping")
    assert (code, out) == (1, "")
    assert f"cannot reach {plain}" in err
