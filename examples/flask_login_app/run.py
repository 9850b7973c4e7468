"""flask-login's ``user_logged_in``, sent in one gunicorn worker, heard in all of them.

Run it with ``make example`` (or ``python examples/flask_login_app/run.py``). It starts
a private Redis server, the audit process (``audit.py``, which imports no Flask), and
gunicorn with 3 workers serving ``app:app``; logs user 1 in with one HTTP request,
which one worker answers; then asks ``GET /seen`` until each of the 3 workers has
answered that it saw the login, and reads the audit file. It prints what each saw,
stops everything (on any error too) and exits 0, or 1 saying what went wrong.

``tests/test_gunicorn.py`` drives the same processes with the helpers below.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gunicorn.config  # type: ignore[import-untyped]
import redis

from signalbus.testing import RedisServer

HERE = Path(__file__).resolve().parent
APP_NAME = "app"  # Flask(__name__) in app.py: the name the app travels under as a sender
CHANNEL = "flask_login.signals.logged-in"  # where SIGNALBUS_BRIDGE carries user_logged_in
WORKERS = 3
TIMEOUT = 30.0  # for any one step: starting, subscribing, delivering, stopping

Login = dict[str, Any]
"""One login a worker received, as GET /seen shows it (see ``app.Logins``)."""

T = TypeVar("T")


def environment(url: str, prefix: str) -> dict[str, str]:
    """The environment of the app's workers and of the audit process: one Redis, one prefix."""
    return {**os.environ, "SIGNALBUS_URL": url, "SIGNALBUS_PREFIX": prefix}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def subscribers(client: redis.Redis, prefix: str) -> int:
    """How many processes listen to the bridged channel (PUBSUB NUMSUB)."""
    ((_, count),) = client.pubsub_numsub(prefix + CHANNEL)
    return int(count)


class Audit:
    """``audit.py`` running, writing its lines to ``path``."""

    def __init__(self, env: dict[str, str], path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "audit.py"), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "READY":
                self._ready.set()

    def ready(self) -> bool:
        """Whether it has subscribed; RuntimeError if it exited before."""
        if self._ready.is_set():
            return True
        if self.process.poll() is not None:
            raise RuntimeError(f"audit.py exited with code {self.process.returncode}")
        return False

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]

    def stop(self) -> int:
        """Close its stdin (it exits cleanly), killing it after TIMEOUT; its exit code."""
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            code = self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        self.process.stdout.close()
        return code

    def __enter__(self) -> Audit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Gunicorn:
    """``gunicorn app:app`` running in this folder on 127.0.0.1, in a session of its own.

    ``answers`` keeps the last GET /seen answer of each worker that answered one.
    """

    def __init__(
        self, env: dict[str, str], *, workers: int = WORKERS, preload: bool = False
    ) -> None:
        self.port = free_port()
        self.answers: dict[int, list[Login]] = {}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--workers", str(workers),
                "--bind", f"127.0.0.1:{self.port}",
                "--log-level", "warning",
                "--graceful-timeout", "5",
                *(["--preload"] if preload else []),
                *_no_control_socket(),
                "app:app",
            ],
            cwd=HERE,
            env=env,
            start_new_session=True,  # its own process group: workers and all can be killed
        )  # fmt: skip

    def request(self, method: str, path: str) -> Any:
        """One request on a new connection (so any worker may take it); the JSON answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {body[:200]!r}")
        return json.loads(body)

    def login(self, user_id: int) -> int:
        """Log ``user_id`` in; the pid of the worker that did."""
        return int(self.request("POST", f"/login/{user_id}")["worker"])

    def ask_seen(self) -> dict[int, list[Login]]:
        """GET /seen once, from whichever worker takes it, into ``answers``; a copy of them.

        While the server starts, a connection it refuses counts as no answer.
        """
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {self.process.returncode}")
        try:
            answer = self.request("GET", "/seen")
        except (OSError, http.client.HTTPException):
            return dict(self.answers)
        self.answers[int(answer["worker"])] = answer["seen"]
        return dict(self.answers)

    def stop(self) -> None:
        """SIGTERM (gunicorn stops its workers), then SIGKILL to the lot after TIMEOUT."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the master is alive: the group is ours
            self.process.wait(TIMEOUT)

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _no_control_socket() -> list[str]:
    """gunicorn 25.1+ opens a control socket, by default ~/.gunicorn/gunicorn.ctl: one path
    for every server on the machine, which this one does not need."""
    settings = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in settings else []


def everyone_saw_it(answers: dict[int, list[Login]], audit_lines: list[dict[str, Any]]) -> bool:
    """Whether every worker answered with a login it received, and the audit logged one."""
    return len(answers) >= WORKERS and all(answers.values()) and bool(audit_lines)


# -- the example --------------------------------------------------------------------


def tell(text: str) -> None:
    print(f"[example] {text}", flush=True)


def wait_until(what: str, condition: Callable[[], T]) -> T:
    """Poll ``condition`` until it is truthy and return it; TimeoutError after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    pause = threading.Event()
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {TIMEOUT:.0f}s: {what}")
        pause.wait(0.02)
    return value


def run(redis_server: RedisServer, audit_path: Path) -> None:
    prefix = f"flask-login-example-{secrets.token_hex(4)}."
    env = environment(redis_server.url, prefix)
    tell(f"Redis on port {redis_server.port}; channel {prefix + CHANNEL!r}")
    with Audit(env, audit_path) as audit, Gunicorn(env) as server, redis_server.client() as client:
        wait_until("audit.py subscribed", audit.ready)
        tell(f"audit.py (pid {audit.process.pid}) subscribed; it imports no Flask")
        wait_until("every worker answered", lambda: len(server.ask_seen()) >= WORKERS)
        wait_until("every worker subscribed", lambda: subscribers(client, prefix) == WORKERS + 1)
        pids = sorted(server.answers)
        tell(f"gunicorn on port {server.port}: workers {pids} answer and listen, as audit.py does")

        worker = server.login(1)
        tell(f"POST /login/1 -> worker {worker} called login_user(alice)")
        server.answers.clear()
        wait_until(
            "every worker and audit.py saw the login",
            lambda: everyone_saw_it(server.ask_seen(), audit.lines()),
        )
        for pid, seen in sorted(server.answers.items()):
            which = "the one that logged alice in" if pid == worker else "another one"
            tell(f"worker {pid} ({which}) saw: {json.dumps(seen)}")
        tell(f"audit.py saw: {json.dumps(audit.lines())}")
        check(worker, server.answers, audit.lines())


def check(worker: int, answers: dict[int, list[Login]], audit_lines: list[dict[str, Any]]) -> None:
    """Each process saw the login exactly once, as it should have; AssertionError if not."""
    assert len(answers) == WORKERS, f"{len(answers)} workers answered, not {WORKERS}"
    for pid, seen in answers.items():
        login = {"user_id": 1, "sender": APP_NAME, "sender_is_app": True, "remote": pid != worker}
        assert seen == [login], f"worker {pid} saw {seen}"
    assert len(audit_lines) == 1, f"audit.py saw {audit_lines}"
    line = audit_lines[0]
    assert (line["user_id"], line["sender"]) == (1, APP_NAME), f"audit.py saw {line}"
    assert line["origin"].endswith(f":{worker}"), f"audit.py saw {line}"


def main() -> int:
    try:
        with RedisServer() as redis_server, tempfile.TemporaryDirectory() as folder:
            run(redis_server, Path(folder) / "audit.jsonl")
    except (TimeoutError, AssertionError, RuntimeError, OSError, redis.RedisError) as exc:
        tell(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        tell("interrupted; everything it started is stopped")
        return 130
    tell("OK: one login_user() in one worker ran the receivers of all 3, and audit.py's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
