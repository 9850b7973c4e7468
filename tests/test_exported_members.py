"""The public surface: a sorted, complete ``__all__``, and an ``import`` that stays light."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import pathlib
import pkgutil
import subprocess
import sys
import types

import pytest

import signalbus

MODULES = sorted(
    info.name for info in pkgutil.iter_modules(signalbus.__path__, prefix="signalbus.")
)
HEAVY = ("flask", "click", "fakeredis", "pydantic")
"""What ``import signalbus`` must not pull in: optional integrations and test tools."""


def test_all_is_sorted() -> None:
    assert signalbus.__all__ == sorted(signalbus.__all__)
    assert len(set(signalbus.__all__)) == len(signalbus.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in signalbus.__all__ if not hasattr(signalbus, name)]
    assert missing == []


def test_all_lists_every_public_member() -> None:
    public = {
        name
        for name, value in vars(signalbus).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(signalbus.__all__)


def test_errors_share_one_root() -> None:
    errors = [
        value
        for name in signalbus.__all__
        if isinstance(value := getattr(signalbus, name), type) and issubclass(value, Exception)
    ]
    assert signalbus.SignalBusError in errors
    assert all(issubclass(error, signalbus.SignalBusError) for error in errors)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_all_names_exist(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not exc.name.startswith("signalbus"):
            pytest.skip(f"{name} needs {exc.name}, which is not installed")
        raise
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert len(set(exported)) == len(exported)
    assert [member for member in exported if not hasattr(module, member)] == []


def test_import_signalbus_stays_light() -> None:
    code = (
        "import json, sys\n"
        "import signalbus\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_flask_extension_without_flask_says_which_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['flask'] = None  # as if Flask were not installed\n"
        "import signalbus.flask\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "pip install 'redis-signalbus[flask]'" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ModuleNotFoundError")


def test_the_package_is_typed_and_versioned() -> None:
    assert (pathlib.Path(signalbus.__file__).parent / "py.typed").is_file()
    assert signalbus.__version__ == importlib.metadata.version("redis-signalbus")
