"""The README's examples are code that works, run as they are printed there."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from signalbus import Bus, Namespace
from signalbus.bus import default_bus

from .helpers import ROOT, wait_for


def example(heading: str) -> str:
    """The first Python block under ``heading``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def run_as_module(name: str, code: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, "README.md", "exec"), vars(module))
    return module


@pytest.fixture
def recipe(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The recipe as module ``app``; its channel is used by no other test."""
    monkeypatch.setenv("SIGNALBUS_URL", redis_url)
    module = run_as_module(
        "app", example("Flask, and the signals of the libraries it uses"), monkeypatch
    )
    yield module
    module.app.extensions["signalbus"].bus.close(timeout=5)


def test_a_login_in_one_worker_reaches_the_others(recipe: Any, redis_url: str) -> None:
    recipe.menus.update({1: "cached", 2: "cached"})
    assert recipe.app.test_client().post("/login/1").text == "welcome"
    assert 1 not in recipe.menus  # the local receiver ran, in the request
    # A login in another worker, which made the same app and types.
    with Bus(redis_url) as another_worker:
        app_there = object()
        another_worker.register_sender(app_there, "app")
        another_worker.register_type(recipe.User, lambda user: user.id, recipe.load_user)
        Namespace("flask_login.signals", bus=another_worker).signal("logged-in").send(
            app_there, user=recipe.User(2)
        )
        wait_for(lambda: 2 not in recipe.menus)


@pytest.fixture
def auth_events(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[str]:
    """What the typed and signed example printed, run as module ``auth_events``."""
    monkeypatch.setenv("SIGNALBUS_URL", redis_url)
    run_as_module("auth_events", example("Typed and signed signals"), monkeypatch)
    yield capsys.readouterr().out
    bus = default_bus()
    assert bus is not None
    bus.close(timeout=5)


def test_typed_and_signed_example(
    auth_events: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, error = auth_events.split("\n", 1)
    assert first == "web: user 7 (free) logged in at 10:00 UTC"
    assert error.startswith("signal 'auth.logged-in': the arguments do not fit LoggedIn:")
    assert "user_id: Input should be a valid integer" in error and "at: Field required" in error
    bus = default_bus()
    assert bus is not None
    # Another service, still signing with the old key alone, and one that signs nothing.
    with (
        Bus(redis_url, signing_keys=["2026-10: the one before"]) as old_key,
        Bus(redis_url, signing_keys=[]) as unsigned,
    ):
        for sender, user_id in ((old_key, 8), (unsigned, 9)):
            Namespace("auth", bus=sender).signal("logged-in").send(
                "api", user_id=user_id, at="2026-11-24T11:30:00+00:00", plan="pro"
            )
            sender.flush(5)
        wait_for(lambda: bus.stats()["invalid"] == 1 and bus.stats()["received"] == 2)
    assert capsys.readouterr().out == "api: user 8 (pro) logged in at 11:30 UTC\n"
