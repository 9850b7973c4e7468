"""gunicorn for real, serving examples/flask_login_app with 3 workers, with and without
--preload: flask-login's own ``user_logged_in``, sent by ``login_user()`` in the one
worker that took the request, reaches the receivers of every worker once, and a process
that imports no Flask; the master (which made the bus, with --preload) never listens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from examples.flask_login_app import run as example

from .helpers import wait_for

pytestmark = pytest.mark.slow

TIMEOUT = example.TIMEOUT
WORKERS = example.WORKERS


@pytest.fixture
def env(redis_url: str, prefix: str) -> dict[str, str]:
    return example.environment(redis_url, prefix)


@pytest.fixture
def audit(env: dict[str, str], tmp_path: Path) -> Iterator[example.Audit]:
    """examples/flask_login_app/audit.py, subscribed."""
    with example.Audit(env, tmp_path / "audit.jsonl") as audit:
        wait_for(audit.ready, TIMEOUT)
        yield audit


@pytest.fixture(params=[False, True], ids=["no-preload", "preload"])
def server(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    audit: example.Audit,
    raw: redis.Redis,
    prefix: str,
) -> Iterator[example.Gunicorn]:
    """gunicorn with every worker serving and subscribed (and the audit process too)."""
    with example.Gunicorn(env, workers=WORKERS, preload=request.param) as server:
        wait_for(lambda: len(server.ask_seen()) >= WORKERS, TIMEOUT)
        # At least: were the master still listening, the test would see one more.
        wait_for(lambda: example.subscribers(raw, prefix) >= WORKERS + 1, TIMEOUT)
        yield server


def test_a_login_in_one_worker_reaches_every_worker_and_a_process_without_flask(
    server: example.Gunicorn, audit: example.Audit, raw: redis.Redis, prefix: str
) -> None:
    assert list(server.answers.values()) == [[]] * WORKERS  # nobody has seen a login yet
    worker = server.login(1)
    assert worker in server.answers

    server.answers.clear()  # from now on, what each worker answers after the login
    wait_for(lambda: example.everyone_saw_it(server.ask_seen(), audit.lines()), TIMEOUT)
    assert len(server.answers) == WORKERS, server.answers  # no worker died and was replaced
    for pid, seen in server.answers.items():
        # In every worker the sender is its own app object, and the user a User again
        # (user_id is user.id); remote everywhere but in the request that logged in.
        expected = {"user_id": 1, "sender": "app", "sender_is_app": True, "remote": pid != worker}
        assert seen == [expected], pid
    # No User and no app registered there: the user arrives as its id, the app as its name.
    (line,) = audit.lines()
    assert (line["user_id"], line["sender"]) == (1, example.APP_NAME)
    assert line["origin"].endswith(f":{worker}")
    assert isinstance(line["event"], str)

    # Listening: the 3 workers and audit.py. Not gunicorn's master: with --preload it made
    # the bus and subscribed, and stopped receiving once it had forked its workers.
    assert example.subscribers(raw, prefix) == WORKERS + 1
