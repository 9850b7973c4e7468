"""The sdist is a tree the tests run in: it holds the suite and everything the suite
reads or runs, and pytest collects there exactly what it collects here.

The sdist is built with setuptools' PEP 517 backend called directly, in a process of its
own, as a frontend such as ``build`` would (no frontend needed), from a copy of this tree
without what git ignores: as from a fresh clone. Built here, it would also hold every file
that a ``redis_signalbus.egg-info/SOURCES.txt`` left by an earlier build lists, which
MANIFEST.in may no longer name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.slow

BUILD = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"

NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "build", "dist"
)
"""What .gitignore leaves out (and .git): a fresh clone has none of it."""

FILES = ("README.md", "LICENSE", "pyproject.toml", "Makefile", "signalbus/py.typed")
"""What pyproject.toml names, the package's type marker, and ``make test``."""

TREES = ("signalbus", "tests", "examples", "bench")
"""Every file of these: the package, the suite (conftest and helpers included), the
examples it runs, and bench/, which ``make lint`` checks."""


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of this tree, unpacked: its top directory."""
    clone = tmp_path_factory.mktemp("clone") / "tree"
    shutil.copytree(ROOT, clone, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("sdist")
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=clone, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        # Python 3.11.4 and newer check what they unpack (and warn when not asked to).
        checked = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(out, **checked)  # type: ignore[arg-type]
    return out / archive.name.removesuffix(".tar.gz")


def source_files(top: Path) -> set[str]:
    """The files of ``top`` that an sdist of it must hold, relative to it."""
    trees = {
        path.relative_to(top).as_posix()
        for tree in TREES
        for path in (top / tree).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    return trees | set(FILES)


def held(top: Path) -> set[str]:
    return {path.relative_to(top).as_posix() for path in top.rglob("*") if path.is_file()}


def collected(top: Path) -> list[str]:
    """The ids of the tests pytest collects in ``top``, run with this interpreter."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=top,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return [line for line in listed.stdout.splitlines() if "::" in line]


def test_the_sdist_holds_the_suite_and_what_it_reads(sdist: Path) -> None:
    files = held(sdist)
    assert source_files(ROOT) - files == set()
    assert {"tests/conftest.py", "tests/helpers.py", "LICENSE", "signalbus/py.typed"} <= files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]


def test_pytest_collects_the_same_tests_in_the_sdist(sdist: Path) -> None:
    here = collected(ROOT)
    assert here and collected(sdist) == here
