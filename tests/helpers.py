"""Waiting for conditions, never for time."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from signalbus.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``signalbus *args``, run in this process: the exit code, stdout and stderr."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        pause.wait(interval)


class Recorder:
    """A receiver that records its calls and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append((sender, kwargs))

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[Any, dict[str, Any]]]:
        wait_for(lambda: len(self.calls) >= count, timeout)
        return list(self.calls)


class Child:
    """A ``python -m tests.child`` process (or ``-m module``) whose output is collected by
    threads."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, module: str = "tests.child"
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: list[str] = []
        self._errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, into), daemon=True)
            for stream, into in (
                (self.process.stdout, self.lines),
                (self.process.stderr, self._errors),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: "READY" in self.lines or self.process.poll() is not None, timeout)
        assert "READY" in self.lines, self.stderr()

    def events(self) -> list[dict[str, Any]]:
        return [event for event in self._json() if "gap" not in event]

    def gaps(self) -> list[dict[str, Any]]:
        """What a listener was told by ``history_gap``."""
        return [event["gap"] for event in self._json() if "gap" in event]

    def numbers(self) -> list[int]:
        """The ``n`` of each event a listener printed, in order."""
        return [event["kwargs"]["n"] for event in self.events()]

    def _json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def ask(self, line: str) -> None:
        """Write ``line`` to the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 20.0) -> int:
        """Close stdin and return the exit code (killing the process after ``timeout``)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def stderr(self) -> str:
        return "\n".join(self._errors)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
