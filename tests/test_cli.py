"""The ``signalbus`` command, against the real test server.

``send`` and ``ping`` run in this process through ``main()``; ``tail`` runs as a real
``python -m signalbus.cli`` process, so it can be interrupted and is always killed.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import IO

import pytest
import redis

from signalbus import Bus, Namespace
from signalbus.cli import main
from signalbus.codec import Codec
from signalbus.testing import RedisServer

from .helpers import ROOT, Recorder, wait_for


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``signalbus *args``: the exit code, stdout and stderr."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def command_line(*args: str) -> list[str]:
    """The command line that runs ``signalbus *args`` in a new process."""
    return [sys.executable, "-m", "signalbus.cli", *args]


class Tail:
    """A ``signalbus tail`` process, subscribed (``PUBSUB NUMPAT`` counts it) once made.

    Threads collect its output as it comes, so a test can wait for a line.
    """

    def __init__(self, raw: redis.Redis, *args: str) -> None:
        before = raw.pubsub_numpat()
        self.process = subprocess.Popen(
            command_line(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=_collect, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()
        try:
            wait_for(lambda: raw.pubsub_numpat() > before or self.process.poll() is not None)
            assert self.process.poll() is None, self.finish()
        except BaseException:
            self.kill()
            raise

    def finish(self, timeout: float = 10.0) -> tuple[int, str, str]:
        """Wait for the process to exit: its exit code, stdout and stderr."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.finish()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _collect(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


@pytest.fixture
def start_tail(raw: redis.Redis) -> Iterator[Callable[..., Tail]]:
    tails: list[Tail] = []

    def start(*args: str) -> Tail:
        tail = Tail(raw, *args)
        tails.append(tail)
        return tail

    yield start
    for tail in tails:
        tail.kill()


# -- ping and errors common to all commands ------------------------------------------------


def test_ping_reports_a_reachable_server(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--url", redis_url, "ping")
    assert code == 0
    assert "answers" in out


def test_ping_fails_clearly_when_the_server_is_unreachable(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--url", unreachable_url, "ping")
    assert code == 1
    assert "cannot reach" in err


@pytest.mark.parametrize("command", [["ping"], ["tail"], ["send", "auth.logged-in", "x=1"]])
def test_every_command_fails_in_one_line_without_the_password(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = unreachable_url.replace("redis://", "redis://ops:s3cret@")
    code, out, err = run(capsys, *command, "--url", url)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot reach redis://ops:***@127.0.0.1:" in err
    assert "s3cret" not in err


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--url", "localhost:6379", "ping")
    assert code == 2
    assert "not a Redis URL" in err


# -- send ----------------------------------------------------------------------------------


def test_send_delivers_an_event_with_parsed_values(
    make_bus: Callable[..., Bus],
    redis_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    received = Recorder()
    Namespace("auth", bus=make_bus()).signal("logged-in").connect(received)
    values = {
        "user_id": "42",
        "ratio": "0.5",
        "ok": "true",
        "nothing": "null",
        "name": "alice",
        "zip": '"01234"',
        "tags": '["a", 1]',
        "meta": '{"plan": "pro"}',
        "empty": "",
        "not_json": "{nope",
    }
    code, out, err = run(
        capsys,
        *("--url", redis_url, "--prefix", prefix, "send", "auth.logged-in", "--sender", "web"),
        *(f"{key}={value}" for key, value in values.items()),
    )
    assert (code, err) == (0, "")
    assert out.startswith("sent auth.logged-in  sender='web'  user_id=42 ratio=0.5 ok=True")
    [(sender, kwargs)] = received.wait(1)
    assert sender == "web"
    assert kwargs == {
        "user_id": 42,
        "ratio": 0.5,
        "ok": True,
        "nothing": None,
        "name": "alice",
        "zip": "01234",
        "tags": ["a", 1],
        "meta": {"plan": "pro"},
        "empty": "",
        "not_json": "{nope",
    }


def test_send_splits_the_channel_at_its_last_dot_and_takes_options_after_the_command(
    make_bus: Callable[..., Bus],
    redis_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    received = Recorder()
    Namespace("myapp.auth", bus=make_bus()).signal("logged-in").connect(received)
    code, _, _ = run(capsys, "send", "myapp.auth.logged-in", "--url", redis_url, "--prefix", prefix)
    assert code == 0
    assert received.wait(1) == [(None, {})]


@pytest.mark.parametrize("channel", ["logged-in", ".logged-in", "auth."])
def test_send_rejects_a_channel_that_is_not_namespace_dot_signal(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], channel: str
) -> None:
    code, _, err = run(capsys, "--url", unreachable_url, "send", channel, "x=1")
    assert code == 2
    assert "is not <namespace>.<signal>" in err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["user_id"], "expected KEY=VALUE"),
        (["=1"], "expected KEY=VALUE"),
        (["a=1", "a=2"], "given twice"),
        (["_async_wrapper=1"], "reserved"),
    ],
)
def test_send_rejects_malformed_values(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], values: list[str], message: str
) -> None:
    code, _, err = run(capsys, "--url", unreachable_url, "send", "auth.logged-in", *values)
    assert code == 2
    assert message in err


# -- tail ----------------------------------------------------------------------------------


def test_tail_json_prints_the_events_in_order(
    start_tail: Callable[..., Tail],
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    redis_url: str,
    prefix: str,
) -> None:
    tail = start_tail("--url", redis_url, "--prefix", prefix, "tail", "--count", "2", "--json")
    raw.publish(f"{prefix}billing.invoice-paid", b"\x98garbage")
    paid = Namespace("billing", bus=make_bus(synchronous=True)).signal("invoice-paid")
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    paid.send(
        "web",
        when=when,
        id=uuid.UUID(int=7),
        amount=Decimal("1.10"),
        pair=(1, 2),
        raw=b"\x00",
        nan=float("nan"),
        keys={1: "int", (1, 2): "tuple"},
    )
    paid.send(None, n=2)
    code, out, err = tail.finish()
    assert code == 0, err
    assert "billing.invoice-paid  skipped: " in err  # stdout holds only events
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["channel"] == second["channel"] == "billing.invoice-paid"
    assert (first["sender"], second["sender"]) == ("web", None)
    assert first["kwargs"] == {
        "when": "2024-05-06T07:08:09+00:00",
        "id": "00000000-0000-0000-0000-000000000007",
        "amount": "1.10",
        "pair": [1, 2],
        "raw": "b'\\x00'",
        "nan": "nan",
        "keys": {"1": "int", "(1, 2)": "tuple"},
    }
    assert second["kwargs"] == {"n": 2}
    first_token, first_seq = first["id"].rsplit("-", 1)
    assert second["id"] == f"{first_token}-{int(first_seq) + 1}"
    assert first["origin"] == second["origin"] == f"{socket.gethostname()}:{os.getpid()}"
    assert first["timestamp"] <= second["timestamp"]
    assert datetime.datetime.fromisoformat(first["time"]).timestamp() == pytest.approx(
        first["timestamp"]
    )


def test_tail_shows_what_it_skips_and_goes_on(
    start_tail: Callable[..., Tail],
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    redis_url: str,
    prefix: str,
) -> None:
    tail = start_tail("tail", "--url", redis_url, "--prefix", prefix, "--count", "1")
    raw.publish(f"{prefix}auth.logged-in", b"not an event")
    forged = Codec(max_message_size=1 << 20).encode(
        token=b"12345678",
        seq=1,
        channel="auth.other",
        sender=None,
        kwargs={},
        timestamp=0.0,
        origin="forger:1",
    )
    raw.publish(f"{prefix}auth.logged-in", forged)
    Namespace("auth", bus=make_bus(synchronous=True)).signal("logged-in").send("web", user_id=42)
    code, out, err = tail.finish()
    assert code == 0, err
    garbage, other_channel, event = out.splitlines()
    assert "auth.logged-in  skipped: not a signalbus envelope" in garbage
    assert "skipped: the event names channel 'auth.other'" in other_channel
    assert "auth.logged-in  sender='web'  origin=" in event
    assert event.endswith(" user_id=42")


def test_tail_matches_its_pattern_under_the_prefix_only(
    start_tail: Callable[..., Tail],
    make_bus: Callable[..., Bus],
    redis_url: str,
    prefix: str,
) -> None:
    # A prefix holding glob characters is matched literally.
    tail = start_tail(
        "--url", redis_url, "--prefix", f"{prefix}[a]*", "tail", "auth.*", "--count", "1"
    )
    unrelated_prefix = Namespace("auth", bus=make_bus(prefix=f"{prefix}a", synchronous=True))
    unrelated_prefix.signal("logged-in").send(None, n=1)
    ours = make_bus(prefix=f"{prefix}[a]*", synchronous=True)
    Namespace("billing", bus=ours).signal("invoice-paid").send(None, n=2)
    Namespace("auth", bus=ours).signal("logged-in").send(None, n=3)
    code, out, err = tail.finish()
    assert code == 0, err
    [line] = out.splitlines()
    assert " auth.logged-in " in line
    assert line.endswith(" n=3")


def test_tail_exits_quietly_on_ctrl_c(
    start_tail: Callable[..., Tail], redis_url: str, prefix: str
) -> None:
    tail = start_tail("--url", redis_url, "--prefix", prefix, "tail")
    wait_for(lambda: tail.err)
    tail.process.send_signal(signal.SIGINT)
    code, out, err = tail.finish()
    assert (code, out) == (0, "")
    assert err.splitlines() == [f"tailing '{prefix}*' on {redis_url} (Ctrl-C to stop)"]


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_tail_stops_quietly_when_its_reader_goes_away(
    make_bus: Callable[..., Bus], raw: redis.Redis, redis_url: str, prefix: str, mode: list[str]
) -> None:
    before = raw.pubsub_numpat()
    process = subprocess.Popen(
        command_line("tail", *mode, "--url", redis_url, "--prefix", prefix),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: raw.pubsub_numpat() > before or process.poll() is not None)
        assert process.stdout is not None
        process.stdout.close()  # as `signalbus tail | head -1` does once it has its line
        Namespace("auth", bus=make_bus(synchronous=True)).signal("logged-in").send(None)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "Exception" not in err


@pytest.mark.slow
def test_tail_reconnects_after_a_server_restart(own_server: RedisServer) -> None:
    with own_server.client() as before_restart:
        tail = Tail(before_restart, "--url", own_server.url, "tail", "--count", "1")
    try:
        own_server.stop()
        wait_for(lambda: any("reconnecting" in line for line in tail.err))
        own_server.start()
        with own_server.client() as after_restart:
            wait_for(lambda: after_restart.pubsub_numpat() == 1)
        with Bus(own_server.url, synchronous=True) as bus:
            Namespace("auth", bus=bus).signal("logged-in").send(None, n=1)
        code, out, err = tail.finish()
    finally:
        tail.kill()
    assert code == 0, err
    assert out.rstrip().endswith(" n=1")
    assert "reconnected; tailing '*' again" in err
