"""The catalog: buses record the signals they carry, and ``signalbus ls`` and
``signalbus schema`` show them with what Redis knows now."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import blinker
import pydantic
import pytest
import redis

import signalbus
from signalbus import Bus, Group, History, Namespace
from signalbus.catalog import Definition
from signalbus.keyspace import catalog_key
from signalbus.testing import Proxy, RedisServer

from .helpers import Recorder, run_cli, wait_for


class LoggedIn(pydantic.BaseModel):
    user_id: int
    ip: str | None = None


def record(raw: redis.Redis, prefix: str, channel: str) -> Definition | None:
    text = raw.hget(catalog_key(prefix), channel)
    return None if text is None else Definition.from_json(channel, text)


def recorded(raw: redis.Redis, prefix: str, channel: str) -> Definition:
    """The record of ``channel``, once a bus has written it."""
    found: Definition = wait_for(lambda: record(raw, prefix, channel))
    return found


def test_a_bus_records_each_signal_it_defines(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    ns = Namespace("auth", bus=bus, history=History(max_count=500, max_age=None))
    ns.signal("logged-in", "A user logged in.\n\nWith the user's id.", schema=LoggedIn)
    ns.signal("logged-out", history=False)
    found = recorded(raw, prefix, "auth.logged-in")
    assert found.doc == "A user logged in.\n\nWith the user's id."
    assert (found.schema_name, found.schema) == ("LoggedIn", LoggedIn.model_json_schema())
    assert found.history == {"max_count": 500, "max_age": None}
    assert found.origin == bus.origin
    bare = recorded(raw, prefix, "auth.logged-out")
    assert (bare.doc, bare.schema, bare.history) == (None, None, None)


def test_a_bare_definition_never_replaces_a_richer_one(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    listener = make_bus()
    Namespace("auth", bus=listener).signal("logged-in")  # a listener naming it bare
    assert recorded(raw, prefix, "auth.logged-in").schema is None
    sender = make_bus()
    Namespace("auth", bus=sender).signal("logged-in", "A user logged in.", schema=LoggedIn)
    wait_for(lambda: recorded(raw, prefix, "auth.logged-in").schema_name == "LoggedIn")
    sender.close()  # its record is on the server by now
    late = make_bus()
    Namespace("auth", bus=late).signal("logged-in")
    late.close()  # close() waits for the catalog's writes
    found = recorded(raw, prefix, "auth.logged-in")
    assert (found.doc, found.schema_name, found.origin) == (
        "A user logged in.",
        "LoggedIn",
        sender.origin,
    )


def test_the_default_bus_records_signals_defined_before_and_after_it(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    before = signalbus.Namespace("app").signal("started")
    bus = signalbus.configure(redis_url, prefix=prefix)
    try:
        after = signalbus.Namespace("app").signal("stopped", "The app stopped.")
        assert recorded(raw, prefix, before.channel).doc is None
        assert recorded(raw, prefix, after.channel).doc == "The app stopped."
    finally:
        bus.close()


def test_catalog_false_records_nothing(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    quiet, loud = make_bus(catalog=False), make_bus()
    Namespace("auth", bus=quiet).signal("kept-quiet").send("web")
    Namespace("auth", bus=loud).signal("said-aloud")
    recorded(raw, prefix, "auth.said-aloud")  # written after anything quiet would have been
    quiet.close()
    assert record(raw, prefix, "auth.kept-quiet") is None


def test_a_definition_made_while_redis_is_away_is_recorded_when_it_is_back(
    own_server: RedisServer, prefix: str
) -> None:
    with Proxy(own_server.port) as proxy, Bus(proxy.url, prefix=prefix) as bus:
        proxy.cut()
        signal = Namespace("auth", bus=bus).signal("logged-in", "A user logged in.")
        proxy.heal()
        raw = own_server.client()
        try:
            assert recorded(raw, prefix, signal.channel).doc == "A user logged in."
        finally:
            raw.close()


def test_a_refused_record_is_logged_and_the_bus_goes_on(
    own_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = own_server.client()
    # May publish and keep history, but not write the catalog.
    admin.acl_setuser(
        "app",
        enabled=True,
        passwords=["+secret"],
        keys=[f"{prefix}signalbus:history:*"],
        channels=["*"],
        commands=["+@all", "-hset", "-hsetnx"],
    )
    url = f"redis://app:secret@127.0.0.1:{own_server.port}/0"
    with caplog.at_level(logging.WARNING, "signalbus"), Bus(url, prefix=prefix) as bus:
        received = Recorder()
        signal = Namespace("auth", bus=bus).signal("logged-in", "A user logged in.")
        signal.connect(received)
        wait_for(lambda: "the catalog was not updated" in caplog.text)
        assert "NOPERM" in caplog.text or "permission" in caplog.text
        signal.send("web", n=1)
        assert received.wait(1) == [("web", {"n": 1})]
    assert admin.hlen(catalog_key(prefix)) == 0
    admin.close()


@pytest.fixture
def system(make_bus: Callable[..., Bus]) -> Iterator[signalbus.Signal]:
    """``auth.logged-in`` sent 3 times, received by two processes (one in a group), and
    ``auth.logged-out``, defined and never sent."""
    sender = Namespace("auth", bus=make_bus())
    logged_in = sender.signal("logged-in", "A user logged in.\nMore words.", schema=LoggedIn)
    sender.signal("logged-out", history=False)
    audit = Namespace("auth", bus=make_bus()).signal("logged-in")
    audit.connect(Recorder(), weak=False)
    audit.connect(Recorder(), weak=False, group=Group("audit"))
    Namespace("auth", bus=make_bus()).signal("logged-in").connect(Recorder(), weak=False)
    for user_id in range(3):
        logged_in.send("web", user_id=user_id)
    yield logged_in


def test_ls_shows_each_signal_with_who_listens_and_what_is_kept(
    system: signalbus.Signal,
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    wait_for(lambda: raw.xlen(f"{prefix}signalbus:history:auth.logged-in") == 3)
    wait_for(lambda: raw.hlen(catalog_key(prefix)) == 2)
    code, out, err = on_test_bus("ls")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "auth.logged-in  schema=LoggedIn  subscribers=2  history=3  groups=audit",
        "  A user logged in.",
        "auth.logged-out  schema=-  subscribers=0  history=0  groups=-",
    ]
    code, out, err = on_test_bus("ls", "--json")
    assert (code, err) == (0, "")
    logged_in, logged_out = (json.loads(line) for line in out.splitlines())
    assert logged_in["definition"]["schema"] == LoggedIn.model_json_schema()
    assert {k: logged_in[k] for k in ("subscribers", "history_length", "groups")} == {
        "subscribers": 2,
        "history_length": 3,
        "groups": ["audit"],
    }
    assert logged_out["definition"]["history"] is None


def test_ls_lists_a_kept_signal_nobody_recorded(
    make_bus: Callable[..., Bus], on_test_bus: Callable[..., tuple[int, str, str]]
) -> None:
    assert on_test_bus("ls") == (0, "", "no signals recorded or kept here\n")
    assert on_test_bus("send", "legacy.event", "n=1")[0] == 0  # the CLI records nothing
    code, out, _ = on_test_bus("ls")
    assert (code, out) == (0, "legacy.event  schema=-  subscribers=0  history=1  groups=-\n")


def test_a_bridged_signal_is_listed_with_its_own_doc_or_none(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    bus = make_bus()
    plain, documented = blinker.Signal(), blinker.NamedSignal("done", "A library's job is done.")
    bus.bridge(plain, "library.plain")
    bus.bridge(documented, "library.done")
    assert recorded(raw, prefix, "library.plain").doc is None  # not blinker's class docstring
    assert recorded(raw, prefix, "library.done").doc == "A library's job is done."
    code, out, err = on_test_bus("ls")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "library.done  schema=-  subscribers=1  history=0  groups=-",
        "  A library's job is done.",
        "library.plain  schema=-  subscribers=1  history=0  groups=-",
    ]


def test_schema_prints_the_json_schema(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    on_test_bus: Callable[..., tuple[int, str, str]],
) -> None:
    Namespace("auth", bus=make_bus()).signal("logged-in", schema=LoggedIn)
    Namespace("auth", bus=make_bus()).signal("logged-out")
    wait_for(lambda: raw.hlen(catalog_key(prefix)) == 2)
    code, out, err = on_test_bus("schema", "auth.logged-in")
    assert (code, err) == (0, "")
    assert json.loads(out) == LoggedIn.model_json_schema()
    problems: dict[str, Any] = {
        "auth.logged-out": "signal 'auth.logged-out' has no schema",
        "auth.nothing": "no signal 'auth.nothing' in the catalog (signalbus ls lists them)",
    }
    for channel, problem in problems.items():
        code, out, err = on_test_bus("schema", channel)
        assert (code, out) == (2, "") and problem in err


def test_ls_and_schema_exit_1_when_redis_is_unreachable(
    unreachable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["ls"], ["schema", "auth.logged-in"]):
        code, out, err = run_cli(capsys, "--url", unreachable_url, *command)
        assert (code, out) == (1, "") and err.startswith("Error: cannot reach redis://127.0.0.1")


class Opaque:
    """A type pydantic can check but not describe in JSON Schema."""


class WithOpaque(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


def test_a_schema_without_json_schema_is_recorded_without_it(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "signalbus"):
        signal = Namespace("auth", bus=make_bus()).signal("odd", schema=WithOpaque)
    assert "no JSON Schema for the catalog" in caplog.text
    found = recorded(raw, prefix, signal.channel)
    assert (found.schema_name, found.schema) == ("WithOpaque", None)


def test_a_record_from_a_newer_version_reads_without_its_new_fields(
    raw: redis.Redis, prefix: str
) -> None:
    newer = {"doc": "A user logged in.", "schema_name": None, "owner": "team-auth"}
    raw.hset(catalog_key(prefix), "auth.logged-in", json.dumps(newer))
    found = record(raw, prefix, "auth.logged-in")
    assert found is not None and found.doc == "A user logged in."
