"""The README's Flask recipe is code that works, run as it is printed there."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from signalbus import Bus, Namespace

from .helpers import ROOT, wait_for


def flask_recipe() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Flask, and the signals of the libraries it uses", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@pytest.fixture
def recipe(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The recipe as module ``app``; its channel is used by no other test."""
    monkeypatch.setenv("SIGNALBUS_URL", redis_url)
    module = types.ModuleType("app")
    monkeypatch.setitem(sys.modules, "app", module)
    exec(compile(flask_recipe(), "README.md", "exec"), vars(module))
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
