"""The ``signalbus`` command, against the real test server.

``send``, ``ping``, ``history``, ``replay``, ``groups`` and ``dead-letters`` run in this
process through ``main()`` (``run_cli``);
``tail`` runs as a real ``python -m signalbus.cli`` process, so it can be interrupted and
is always killed.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import IO, Any, Literal

import pydantic
import pytest
import redis

import signalbus
from signalbus import (
    ArgumentError,
    Bus,
    ConfigurationError,
    Group,
    Namespace,
    PublishError,
    ReplayReport,
    Signal,
)
from signalbus.cli import _time
from signalbus.codec import Codec
from signalbus.groups import DeadLetter
from signalbus.keyspace import catalog_key
from signalbus.testing import RedisServer

from .helpers import ROOT, Recorder, run_cli, wait_for


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
    code, out, _ = run_cli(capsys, "--url", redis_url, "ping")
    assert code == 0
    assert "answers" in out


def test_ping_fails_clearly_when_the_server_is_unreachable(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "--url", unreachable_url, "ping")
    assert code == 1
    assert "cannot reach" in err


EVERY_COMMAND = [
    ["ping"],
    ["ls"],
    ["schema", "auth.logged-in"],
    ["tail"],
    ["send", "auth.logged-in", "x=1"],
    ["history", "auth.logged-in"],
    ["replay", "auth.logged-in", "--since", "0"],
    ["groups", "auth.logged-in"],
    ["dead-letters", "auth.logged-in", "--group", "mailer"],
    ["dead-letters", "auth.logged-in", "--group", "mailer", "--requeue"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_command_fails_in_one_line_without_the_password(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = unreachable_url.replace("redis://", "redis://ops:s3cret@")
    code, out, err = run_cli(capsys, *command, "--url", url)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot reach redis://ops:***@127.0.0.1:" in err
    assert "s3cret" not in err


def test_a_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--url", "localhost:6379", "ping")
    assert code == 2
    assert "bad Redis URL 'localhost:6379': Redis URL must specify one of the" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", EVERY_COMMAND)
@pytest.mark.parametrize("given", ["before", "after", "environment"])
def test_a_misspelt_url_option_is_a_one_line_usage_error(
    unreachable_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    given: str,
) -> None:
    url = f"{unreachable_url}?socket_timout=5"
    if given == "environment":
        monkeypatch.setenv("SIGNALBUS_URL", url)
        args = command
    else:
        args = ["--url", url, *command] if given == "before" else [*command, "--url", url]
    code, out, err = run_cli(capsys, *args)
    assert (code, out) == (2, "")
    assert err == (
        f"Error: bad Redis URL '{url}': unknown option 'socket_timout'; "
        "did you mean 'socket_timeout'?\n"
    )


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
    code, out, err = run_cli(
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
    code, _, _ = run_cli(
        capsys, "send", "myapp.auth.logged-in", "--url", redis_url, "--prefix", prefix
    )
    assert code == 0
    assert received.wait(1) == [(None, {})]


@pytest.mark.parametrize("channel", [".logged-in", "auth.", ""])
@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("send", ["x=1"]),
        ("history", []),
        ("replay", ["--since", "0"]),
        ("groups", []),
        ("dead-letters", ["--group", "mailer"]),
    ],
)
def test_commands_reject_what_is_not_a_channel_name(
    unreachable_url: str,
    capsys: pytest.CaptureFixture[str],
    channel: str,
    command: str,
    options: list[str],
) -> None:
    code, out, err = run_cli(capsys, "--url", unreachable_url, command, channel, *options)
    assert (code, out) == (2, "")
    assert f"Invalid value for CHANNEL: {channel!r} is not a channel name" in err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["user_id"], "expected KEY=VALUE"),
        (["=1"], "expected KEY=VALUE"),
        (["a=1", "a=2"], "given twice"),
        (["_async_wrapper=1"], "'_async_wrapper' is reserved: blinker's send() keeps it"),
        (["_sync_wrapper=1"], "'_sync_wrapper' is reserved: blinker's send_async() keeps it"),
        (["sender=web"], "'sender' is reserved: receivers take the sender as their first"),
    ],
)
def test_send_rejects_malformed_values(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], values: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "--url", unreachable_url, "send", "auth.logged-in", *values)
    assert code == 2
    assert message in err


class Typed(pydantic.BaseModel):
    user_id: int
    plan: Literal["free", "pro"] = "free"
    note: str = ""
    ref: int | str | None = None
    score: float | None = None


@pytest.fixture
def typed(make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str) -> Iterator[Recorder]:
    """A receiver of ``auth.logged-in`` (schema :class:`Typed`) in a process of its own,
    once the catalog holds the schema."""
    received = Recorder()
    Namespace("auth", bus=make_bus()).signal("logged-in", schema=Typed).connect(received)
    wait_for(lambda: raw.hexists(catalog_key(prefix), "auth.logged-in"))
    yield received


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (["user_id=seven"], "user_id: 'seven' is not of type 'integer'"),
        (["user_id=1.5"], "user_id: 1.5 is not of type 'integer'"),
        (["user_id=true"], "user_id: True is not of type 'integer'"),
        (["user_id=7", "plan=gold"], "plan: 'gold' is not one of ['free', 'pro']"),
        (["plan=pro"], "'user_id' is a required property"),
        (["user_id=7", "score=high"], "score: 'high' is not of type 'number' or 'null'"),
    ],
)
def test_send_refuses_values_that_do_not_fit_the_schema_in_the_catalog(
    typed: Recorder,
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
    values: list[str],
    problem: str,
) -> None:
    code, out, err = on_test_bus("send", "auth.logged-in", *values)
    assert (code, out) == (2, "")
    assert (
        "Error: Invalid value for KEY=VALUE: the arguments do not fit Typed, the schema of "
        "auth.logged-in in the catalog (signalbus schema auth.logged-in prints it): "
    ) in err
    assert problem in err
    assert stream_length(raw, prefix) == 0  # nothing sent


def test_send_types_the_values_as_the_schema_in_the_catalog_says(
    typed: Recorder,
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    code, out, err = on_test_bus(
        "send", "auth.logged-in", "user_id=7", "plan=pro", "note=42", "ref=null"
    )
    assert (code, err) == (0, "")
    assert out == "sent auth.logged-in  sender=None  user_id=7 plan='pro' note='42' ref=None\n"
    assert on_test_bus("send", "auth.logged-in", "user_id=8", 'note="quoted"', "ref=x1")[0] == 0
    assert on_test_bus("send", "auth.logged-in", "user_id=9", "ref=12")[0] == 0
    assert typed.wait(3) == [
        (None, {"user_id": 7, "plan": "pro", "note": "42", "ref": None, "score": None}),
        (None, {"user_id": 8, "plan": "free", "note": "quoted", "ref": "x1", "score": None}),
        (None, {"user_id": 9, "plan": "free", "note": "", "ref": 12, "score": None}),
    ]


SIGNING_KEY = "2026-11: the CLI's signing key"


def test_send_signs_with_the_configured_keys(
    make_bus: Callable[..., Bus],
    monkeypatch: pytest.MonkeyPatch,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    receiver_bus = make_bus(signing_keys=[SIGNING_KEY])  # drops what is not signed so
    received = Recorder()
    Namespace("auth", bus=receiver_bus).signal("logged-in").connect(received)
    monkeypatch.setenv("SIGNALBUS_SIGNING_KEYS", SIGNING_KEY)
    assert on_test_bus("send", "auth.logged-in", "n=1")[0] == 0
    assert received.wait(1) == [(None, {"n": 1})]
    assert receiver_bus.stats()["invalid"] == 0


def test_send_help_says_it_checks_the_schema_and_signs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "send", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "the catalog holds a JSON Schema for CHANNEL, the values are checked" in text
    assert "signed with the first key of $SIGNALBUS_SIGNING_KEYS" in text


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


def test_tail_marks_replayed_events(
    start_tail: Callable[..., Tail], make_bus: Callable[..., Bus], redis_url: str, prefix: str
) -> None:
    bus = make_bus()
    paid = Namespace("billing", bus=bus).signal("invoice-paid")
    paid.send("web", n=1)
    assert bus.flush(10)
    # Two patterns: the server counts patterns, not subscribers, and each start waits for one.
    readable = start_tail("--url", redis_url, "--prefix", prefix, "tail", "--count", "1")
    as_json = start_tail(
        "--url", redis_url, "--prefix", prefix, "tail", "billing.*", "--count", "1", "--json"
    )
    assert paid.replay("0").events == 1
    out = readable.finish()[1]
    assert "billing.invoice-paid  sender='web'" in out and "  replayed  n=1" in out
    event = json.loads(as_json.finish()[1])
    assert (event["replayed"], event["kwargs"]) == (True, {"n": 1})


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


# -- history and replay --------------------------------------------------------------------

STREAM_ID = r"\d+-\d+"


def logged_in(make_bus: Callable[..., Bus], count: int) -> Signal:
    """``auth.logged-in`` on a new bus, once it sent ``count`` events (n=0, 1...) kept."""
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    for n in range(count):
        signal.send("web", n=n)
    assert bus.flush(10)
    return signal


def stream_length(raw: redis.Redis, prefix: str) -> int:
    return raw.xlen(f"{prefix}signalbus:history:auth.logged-in")


class Replays:
    """A receiver on a bus of its own (in ``group``, if given): each event's n, and
    whether it was a replay."""

    def __init__(self, make_bus: Callable[..., Bus], group: str | None = None) -> None:
        self.seen: list[tuple[int, bool, str]] = []
        Namespace("auth", bus=make_bus()).signal("logged-in").connect(self, group=group)

    def __call__(self, sender: object, **kwargs: int) -> None:
        event = signalbus.current_event()
        assert event is not None
        self.seen.append((kwargs["n"], event.replayed, event.id))

    def wait(self, count: int) -> list[tuple[int, bool]]:
        wait_for(lambda: len(self.seen) >= count)
        return [(n, replayed) for n, replayed, _ in self.seen]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", datetime.timedelta(seconds=30)),
        ("15m", datetime.timedelta(minutes=15)),
        ("2h", datetime.timedelta(hours=2)),
        ("7d", datetime.timedelta(days=7)),
        ("1732440000000-0", "1732440000000-0"),
        ("1732440000000", "1732440000000"),
        ("2026-11-24T10:00:00+00:00", datetime.datetime(2026, 11, 24, 10, tzinfo=datetime.UTC)),
        ("2026-11-24T10:00Z", datetime.datetime(2026, 11, 24, 10, tzinfo=datetime.UTC)),
        ("2026-11-24T10:00", datetime.datetime(2026, 11, 24, 10).astimezone()),
        ("2026-11-24", datetime.datetime(2026, 11, 24).astimezone()),
        ("1900-01-01T00:00+00:00", datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)),
    ],
)
def test_times_are_durations_iso_datetimes_or_entry_ids(text: str, expected: object) -> None:
    parsed = _time(text)
    assert parsed == expected
    if isinstance(parsed, datetime.datetime):
        assert parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "5x", "12-ab", "-5m", "2026-13-01", "1.5h", ""])
@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("command", ["history", "replay"])
def test_a_bad_time_is_a_usage_error_naming_the_option_and_the_forms(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], text: str, option: str, command: str
) -> None:
    since = [] if option == "--since" else ["--since", "0"]
    code, out, err = run_cli(
        capsys, "--url", unreachable_url, command, "auth.logged-in", *since, option, text
    )
    assert (code, out) == (2, "")
    assert f"Invalid value for '{option}': {text!r} is not a time" in err
    assert all(form in err for form in ("30s, 15m, 2h, 7d", "2026-11-24T10:00", "1732440000000-0"))


def test_history_prints_the_kept_events_oldest_first_with_their_entry_ids(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    signal = logged_in(make_bus, 3)
    ids = [event.stream_id for event in signal.history()]
    code, out, err = on_test_bus("history", "auth.logged-in")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for n, (stream_id, line) in enumerate(zip(ids, lines, strict=True)):
        assert re.fullmatch(
            rf"{stream_id}  \d\d:\d\d:\d\d\.\d{{3}}  auth\.logged-in  sender='web'  "
            rf"origin=\S+:{os.getpid()}  n={n}",
            line,
        )
    assert re.fullmatch(rf"3 events, from {ids[0]} \(.+\) to {ids[2]} \(.+\)\n", err)


def test_history_json_has_the_keys_of_tail_and_the_entry_id(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    signal.send("web", user_id=42, when=datetime.date(2024, 5, 6), tags={"a"})
    signal.send(None)
    assert bus.flush(10)
    code, out, err = on_test_bus("history", "auth.logged-in", "--json")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    kept = list(signal.history())
    assert set(first) == {
        *("id", "channel", "sender", "kwargs", "timestamp", "time", "origin", "replayed"),
        "stream_id",
    }
    assert [first["stream_id"], second["stream_id"]] == [e.stream_id for e in kept]
    assert [first["id"], second["id"]] == [e.id for e in kept]
    assert (first["sender"], second["sender"]) == ("web", None)
    assert first["kwargs"] == {"user_id": 42, "when": "2024-05-06", "tags": ["a"]}
    assert second["kwargs"] == {}
    assert first["channel"] == "auth.logged-in"
    assert first["timestamp"] == kept[0].timestamp
    assert err.startswith("2 events, from ")


def test_history_reads_between_times_and_entry_ids_with_a_limit(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    signal = logged_in(make_bus, 5)
    ids = [str(event.stream_id) for event in signal.history()]

    def numbers(*options: str) -> list[int]:
        code, out, err = on_test_bus("history", "auth.logged-in", "--json", *options)
        assert code == 0, err
        return [json.loads(line)["kwargs"]["n"] for line in out.splitlines()]

    assert numbers("--limit", "2") == [0, 1]
    assert numbers("--since", ids[1], "--until", ids[3]) == [1, 2, 3]
    assert numbers("--since", ids[2], "--limit", "10") == [2, 3, 4]
    assert numbers("--until", ids[1]) == [0, 1]
    assert numbers("--since", "1h") == [0, 1, 2, 3, 4]
    assert numbers("--since", "1969-01-01", "--until", "2h") == []
    first_ms = int(ids[0].split("-")[0])  # bare millisecond ids
    assert numbers("--since", str(first_ms)) == [0, 1, 2, 3, 4]
    assert numbers("--until", str(first_ms - 1)) == []


@pytest.mark.parametrize("window", [[], ["--since", "2h", "--until", "1h"]])
def test_history_says_when_nothing_is_kept(
    make_bus: Callable[..., Bus],
    on_test_bus: Callable[..., tuple[int, str, str]],
    window: list[str],
) -> None:
    if window:
        logged_in(make_bus, 1)
    code, out, err = on_test_bus("history", "auth.logged-in", *window)
    assert (code, out) == (0, "")
    assert err == "no events kept for auth.logged-in in that range\n"


def test_history_rejects_a_limit_under_one(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "--url", unreachable_url, "history", "auth.logged-in", "--limit", "0"
    )
    assert code == 2
    assert "Invalid value for '--limit'" in err


@pytest.mark.parametrize(
    ("command", "key"),
    [
        (["history"], "history:auth.logged-in"),
        (["replay", "--since", "0"], "history:auth.logged-in"),
        (["groups"], "history:auth.logged-in"),
        (["dead-letters", "--group", "mailer"], "dead:auth.logged-in:mailer"),
        (["dead-letters", "--group", "mailer", "--requeue"], "dead:auth.logged-in:mailer"),
    ],
)
def test_a_refusing_server_fails_with_exit_code_1(
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
    command: list[str],
    key: str,
) -> None:
    # Group mailer reads the signal (dead-letters refuses another), then a key is wrong.
    raw.xgroup_create(f"{prefix}signalbus:history:auth.logged-in", "mailer", mkstream=True)
    raw.set(f"{prefix}signalbus:{key}", "not a stream")
    code, out, err = on_test_bus(command[0], "auth.logged-in", *command[1:])
    assert (code, out) == (1, "")
    assert "refused: WRONGTYPE" in err


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_history_stops_quietly_when_its_reader_goes_away(
    make_bus: Callable[..., Bus], redis_url: str, prefix: str, mode: list[str]
) -> None:
    logged_in(make_bus, 2000)  # far more output than a pipe holds
    process = subprocess.Popen(
        command_line("history", "auth.logged-in", *mode, "--url", redis_url, "--prefix", prefix),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline()
        process.stdout.close()  # as `signalbus history ... | head -1` does
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert err == ""


def test_replay_delivers_the_kept_events_again_with_their_ids(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    signal = logged_in(make_bus, 3)
    kept = list(signal.history())
    receiver = Replays(make_bus)
    code, out, err = on_test_bus("replay", "auth.logged-in", "--since", "0")
    assert (code, err) == (0, "")
    assert receiver.wait(3) == [(0, True), (1, True), (2, True)]
    assert [event_id for _, _, event_id in receiver.seen] == [event.id for event in kept]
    summary, first, last = out.splitlines()
    assert re.fullmatch(
        r"replayed 3 events on auth\.logged-in in \d+\.\d\ds; reached 1 process; "
        r"0 entries skipped \(not events\)",
        summary,
    )
    assert first.startswith(f"first  {kept[0].stream_id}  ") and first.endswith(" n=0")
    assert last.startswith(f"last   {kept[2].stream_id}  ") and last.endswith(" n=2")
    assert stream_length(raw, prefix) == 3  # replays are not kept again


def test_replay_takes_a_window_a_limit_and_a_rate(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    signal = logged_in(make_bus, 5)
    ids = [str(event.stream_id) for event in signal.history()]
    receiver = Replays(make_bus)
    code, out, err = on_test_bus(
        "replay", "auth.logged-in", "--since", "1h", "--until", ids[3], "--limit", "2"
    )
    assert (code, err) == (0, "")
    assert out.startswith("replayed 2 events ")
    code, out, err = on_test_bus(
        "replay", "auth.logged-in", "--since", ids[2], "--until", ids[3], "--rate", "1000"
    )
    assert (code, err) == (0, "")
    assert out.startswith("replayed 2 events ")
    signal.send("web", n=99)  # live, after the replays: once it is here, nothing else comes
    assert receiver.wait(5) == [(0, True), (1, True), (2, True), (3, True), (99, False)]


def test_replay_covers_the_events_counted_not_those_sent_meanwhile(
    make_bus: Callable[..., Bus],
    monkeypatch: pytest.MonkeyPatch,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    signal = logged_in(make_bus, 3)
    receiver = Replays(make_bus)
    replay = Signal.replay

    def sent_meanwhile(self: Signal, *args: Any, **kwargs: Any) -> ReplayReport:
        signal.send("web", n=99)  # after the count, before the replay reads
        assert signal.bus is not None and signal.bus.flush(10)
        return replay(self, *args, **kwargs)

    monkeypatch.setattr(Signal, "replay", sent_meanwhile)
    code, out, err = on_test_bus("replay", "auth.logged-in", "--since", "1h")
    assert (code, err) == (0, "")
    assert out.startswith("replayed 3 events ")
    signal.send("web", n=100)
    assert receiver.wait(5) == [(99, False), (0, True), (1, True), (2, True), (100, False)]


def test_replay_shows_its_progress_on_a_terminal_only(
    make_bus: Callable[..., Bus],
    monkeypatch: pytest.MonkeyPatch,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    logged_in(make_bus, 3)
    code, _, err = on_test_bus("replay", "auth.logged-in", "--since", "0")
    assert (code, err) == (0, "")
    monkeypatch.setenv("FORCE_COLOR", "1")  # as if stderr were a terminal
    monkeypatch.setenv("TERM", "xterm")
    code, _, err = on_test_bus("replay", "auth.logged-in", "--since", "0")
    assert code == 0
    assert "replaying auth.logged-in" in err
    assert "3/3" in err


def test_a_dry_run_shows_what_would_be_replayed_and_publishes_nothing(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    signal = logged_in(make_bus, 3)
    kept = list(signal.history())
    receiver = Replays(make_bus)
    code, out, err = on_test_bus("replay", "auth.logged-in", "--since", "0", "--dry-run")
    assert (code, err) == (0, "")
    summary, first, last, note = out.splitlines()
    assert summary == "would replay 3 events on auth.logged-in; 0 entries skipped (not events)"
    assert first.startswith(f"first  {kept[0].stream_id}  ") and first.endswith(" n=0")
    assert last.startswith(f"last   {kept[2].stream_id}  ") and last.endswith(" n=2")
    assert note == "dry run: nothing was published"
    assert stream_length(raw, prefix) == 3
    signal.send("web", n=99)  # live: had the dry run published, its events came first
    assert receiver.wait(1) == [(99, False)]


def test_replay_says_when_there_is_nothing_to_replay(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    logged_in(make_bus, 1)
    code, out, err = on_test_bus("replay", "auth.logged-in", "--since", "2999-01-01")
    assert (code, out) == (0, "")
    assert err == "nothing to replay: no events kept for auth.logged-in in that range\n"


def test_replay_needs_since(unreachable_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--url", unreachable_url, "replay", "auth.logged-in")
    assert (code, out) == (2, "")
    assert "Missing option '--since'" in err


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "inf", "fast"])
def test_replay_rejects_a_rate_that_is_not_a_positive_number(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], rate: str
) -> None:
    code, out, err = run_cli(
        capsys, "--url", unreachable_url, "replay", "auth.logged-in", "--since", "0", "--rate", rate
    )
    assert (code, out) == (2, "")
    assert "Invalid value for '--rate'" in err


def _lost_redis() -> PublishError:
    try:
        raise redis.ConnectionError("Connection reset by peer")
    except redis.ConnectionError as exc:
        try:
            raise PublishError("replay stopped after 100 events") from exc
        except PublishError as error:
            return error


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (_lost_redis(), 1, "cannot reach redis://127.0.0.1:"),
        (redis.ConnectionError("Connection reset by peer"), 1, "cannot reach redis://127.0.0.1:"),
        (PublishError("the queue is full"), 1, "Error: the queue is full"),
        (ArgumentError("signal 'auth.logged-in': bad"), 2, "Error: signal 'auth.logged-in': bad"),
        (ConfigurationError("keeps no history"), 2, "Error: keeps no history"),
    ],
)
def test_what_replay_raises_becomes_an_exit_code(
    make_bus: Callable[..., Bus],
    monkeypatch: pytest.MonkeyPatch,
    on_test_bus: Callable[..., tuple[int, str, str]],
    error: Exception,
    code: int,
    message: str,
) -> None:
    logged_in(make_bus, 1)

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Signal, "replay", fail)
    result = on_test_bus("replay", "auth.logged-in", "--since", "0")
    assert result[:2] == (code, "")
    assert message in result[2]


# -- groups and dead letters ---------------------------------------------------------------

MAIL_SERVER_DOWN = "RuntimeError: the mail server is down"


class Mailer:
    """Group ``mailer`` of auth.logged-in, on a bus of its own: while ``failing`` is set,
    each event fails on its one attempt and goes to dead letters; once it is cleared,
    each is handled and its n recorded."""

    def __init__(self, make_bus: Callable[..., Bus]) -> None:
        self.bus = make_bus()
        self.signal = Namespace("auth", bus=self.bus).signal("logged-in")
        self.member = f"{self.bus.origin}:{self.bus._token_hex}"
        self.failing = threading.Event()
        self.failing.set()
        self.handled: list[int] = []
        group = Group("mailer", max_attempts=1, retry_backoff=0.05)
        self.signal.connect(self, weak=False, group=group)

    def __call__(self, sender: object, **kwargs: int) -> None:
        if self.failing.is_set():
            raise RuntimeError("the mail server is down")
        self.handled.append(kwargs["n"])

    def fail(self, make_bus: Callable[..., Bus], count: int) -> list[DeadLetter]:
        """Send ``count`` events (n=0, 1...) and wait until they are all dead letters."""
        logged_in(make_bus, count)
        wait_for(lambda: self.bus.stats()["dead_lettered"] == count)
        return list(self.signal.dead_letters("mailer"))


def test_groups_shows_each_group_with_its_members_and_dead_letters(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    mailer = Mailer(make_bus)
    audit = Replays(make_bus, group="audit")
    mailer.fail(make_bus, 2)
    audit.wait(2)
    signal = mailer.signal
    wait_for(  # once audit has acknowledged its events
        lambda: (
            [(g.name, g.pending, g.lag, g.dead_letters) for g in signal.group_status()]
            == [("audit", 0, 0, 0), ("mailer", 0, 0, 2)]
        )
    )
    members = [[m.name for m in status.members] for status in signal.group_status()]
    assert members[1] == [mailer.member] and members[0] != members[1]
    last = list(signal.history())[-1].stream_id

    code, out, err = on_test_bus("groups", "auth.logged-in")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    for name, dead, [member], group, member_line in zip(
        ("audit", "mailer"), (0, 2), members, lines[::2], lines[1::2], strict=True
    ):
        assert group == f"{name}  pending=0  lag=0  last_delivered={last}  dead_letters={dead}"
        assert re.fullmatch(rf"  {re.escape(member)}  pending=0  idle=\d+\.\ds", member_line)

    code, out, err = on_test_bus("groups", "auth.logged-in", "--json")
    assert (code, err) == (0, "")
    audit_json, mailer_json = (json.loads(line) for line in out.splitlines())
    [mailer_member] = mailer_json.pop("members")
    assert isinstance(mailer_member.pop("idle"), float)
    assert mailer_member == {"name": mailer.member, "pending": 0}
    assert mailer_json == {
        "name": "mailer",
        "pending": 0,
        "lag": 0,
        "last_delivered": last,
        "dead_letters": 2,
    }
    assert (audit_json["name"], audit_json["dead_letters"]) == ("audit", 0)
    assert [member["name"] for member in audit_json["members"]] == members[0]


def test_groups_says_when_no_group_reads_the_channel(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    nothing = (0, "", "no groups read auth.logged-in\n")
    assert on_test_bus("groups", "auth.logged-in") == nothing  # not even a history
    Replays(make_bus)  # a broadcast receiver is in no group
    logged_in(make_bus, 1)
    assert on_test_bus("groups", "auth.logged-in") == nothing
    assert on_test_bus("groups", "auth.logged-in", "--json") == nothing


def test_dead_letters_lists_what_a_group_gave_up_on_oldest_first(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    mailer = Mailer(make_bus)
    letters = mailer.fail(make_bus, 2)
    kept = [event.stream_id for event in mailer.signal.history()]
    code, out, err = on_test_bus("dead-letters", "auth.logged-in", "--group", "mailer")
    assert (code, err) == (0, "2 dead letters of group mailer on auth.logged-in\n")
    lines = out.splitlines()
    assert len(lines) == 4
    for n, (letter, stream_id, header, event) in enumerate(
        zip(letters, kept, lines[::2], lines[1::2], strict=True)
    ):
        failed = datetime.datetime.fromtimestamp(letter.failed_at)
        assert header == (
            f"{letter.id}  attempts=1  failed={failed:%Y-%m-%d %H:%M:%S.%f}"[:-3]
            + f"  consumer={mailer.member}  error='{MAIL_SERVER_DOWN}'"
        )
        assert re.fullmatch(
            rf"  {stream_id}  \d\d:\d\d:\d\d\.\d{{3}}  auth\.logged-in  sender='web'  "
            rf"origin=\S+:{os.getpid()}  n={n}",
            event,
        )

    # --id without --requeue lists those dead letters only.
    code, out, err = on_test_bus(
        "dead-letters", "auth.logged-in", "--group", "mailer", "--id", letters[1].id
    )
    assert (code, err) == (0, "1 dead letter of group mailer on auth.logged-in\n")
    header, event = out.splitlines()
    assert header.startswith(f"{letters[1].id}  attempts=1  ") and event.endswith("  n=1")


def test_dead_letters_json_has_the_event_as_history_shows_it(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    mailer = Mailer(make_bus)
    letters = mailer.fail(make_bus, 2)
    code, out, err = on_test_bus("dead-letters", "auth.logged-in", "--group", "mailer", "--json")
    assert (code, err) == (0, "2 dead letters of group mailer on auth.logged-in\n")
    listed = [json.loads(line) for line in out.splitlines()]
    assert set(listed[0]) == {"id", "attempts", "error", "failed_at", "consumer", "event"}
    assert [(d["id"], d["attempts"], d["error"], d["consumer"]) for d in listed] == [
        (letter.id, 1, MAIL_SERVER_DOWN, mailer.member) for letter in letters
    ]
    assert [datetime.datetime.fromisoformat(d["failed_at"]) for d in listed] == [
        datetime.datetime.fromtimestamp(letter.failed_at, datetime.UTC) for letter in letters
    ]
    history = on_test_bus("history", "auth.logged-in", "--json")[1]
    assert [d["event"] for d in listed] == [json.loads(line) for line in history.splitlines()]


def test_requeue_gives_the_dead_letters_back_to_the_group(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    mailer = Mailer(make_bus)
    mailer.fail(make_bus, 2)
    mailer.failing.clear()  # the mail server is back
    code, out, err = on_test_bus("dead-letters", "auth.logged-in", "--group", "mailer", "--requeue")
    assert (code, out, err) == (0, "requeued 2 events to group mailer\n", "")
    wait_for(lambda: mailer.handled == [0, 1])
    assert on_test_bus("dead-letters", "auth.logged-in", "--group", "mailer") == (
        0,
        "",
        "0 dead letters of group mailer on auth.logged-in\n",
    )


def test_requeue_with_ids_gives_back_those_dead_letters_only(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    mailer = Mailer(make_bus)
    letters = mailer.fail(make_bus, 2)
    mailer.failing.clear()
    code, out, err = on_test_bus(
        *("dead-letters", "auth.logged-in", "--group", "mailer", "--requeue"),
        *("--id", letters[1].id, "--id", "1-0"),
    )
    assert (code, out) == (0, "requeued 1 event to group mailer\n")
    assert err == "1 id matched no dead letter\n"
    wait_for(lambda: mailer.handled == [1])
    code, out, _ = on_test_bus("dead-letters", "auth.logged-in", "--group", "mailer", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [letters[0].id]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "Missing option '--group'"),
        (["--group", "mailer", "--id", "12"], "Invalid value for '--id': '12' is not a dead"),
        (["--group", "mailer", "--requeue", "--json"], "--json lists dead letters; it does not"),
    ],
)
def test_dead_letters_usage_errors(
    unreachable_url: str, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code, out, err = run_cli(
        capsys, "--url", unreachable_url, "dead-letters", "auth.logged-in", *options
    )
    assert (code, out) == (2, "")
    assert message in err


@pytest.mark.parametrize(
    ("command", "outcome"),
    [
        (["dead-letters", "auth.logged-in", "--group", "nobody"], "nothing was listed"),
        (["dead-letters", "auth.logged-in", "--group", "nobody", "--json"], "nothing was listed"),
        (
            ["dead-letters", "auth.logged-in", "--group", "nobody", "--requeue"],
            "nothing was requeued",
        ),
        (["replay", "auth.logged-in", "--since", "0", "--group", "nobody"], "nothing was replayed"),
        (
            ["replay", "auth.logged-in", "--since", "0", "--group", "nobody", "--dry-run"],
            "nothing was replayed",
        ),
    ],
)
@pytest.mark.parametrize("kept", [0, 1])
def test_a_group_that_does_not_read_the_channel_is_refused_by_every_command(
    make_bus: Callable[..., Bus],
    on_test_bus: Callable[..., tuple[int, str, str]],
    command: list[str],
    outcome: str,
    kept: int,
) -> None:
    Mailer(make_bus)  # group mailer reads auth.logged-in
    logged_in(make_bus, kept)
    code, out, err = on_test_bus(*command)
    assert (code, out) == (2, "")
    assert err.endswith(
        f"Error: signal 'auth.logged-in': no group 'nobody' reads it (groups: mailer); {outcome}\n"
    )


def test_replay_into_a_group_reaches_that_group_alone(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    audit = Replays(make_bus, group="audit")
    broadcast = Replays(make_bus)
    signal = logged_in(make_bus, 2)
    assert audit.wait(2) == broadcast.wait(2) == [(0, False), (1, False)]
    code, out, err = on_test_bus(
        "replay", "auth.logged-in", "--since", "0", "--group", "audit", "--dry-run"
    )
    assert (code, err) == (0, "")
    assert out.startswith("would replay 2 events on auth.logged-in to group audit; 0 entries ")
    code, out, err = on_test_bus("replay", "auth.logged-in", "--since", "0", "--group", "audit")
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"replayed 2 events on auth\.logged-in to group audit in \d+\.\d\ds; "
        r"0 entries skipped \(not events\)",
        out.splitlines()[0],
    )
    assert audit.wait(4) == [(0, False), (1, False), (0, True), (1, True)]
    signal.send("web", n=99)  # live: once both have it, they had all the replay gave them
    assert audit.wait(5) == [(0, False), (1, False), (0, True), (1, True), (99, False)]
    assert broadcast.wait(3) == [(0, False), (1, False), (99, False)]
