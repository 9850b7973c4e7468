"""A Flask app whose flask-login ``user_logged_in`` reaches every gunicorn worker.

Serve it with ``gunicorn -w 3 app:app`` from this folder, with ``SIGNALBUS_URL`` and
``SIGNALBUS_PREFIX`` set (``run.py`` does all of it). ``POST /login/<user_id>`` logs a
user in with ``flask_login.login_user()``, which sends flask-login's own signal; the
``SIGNALBUS_BRIDGE`` setting carries it to the other workers (and to ``audit.py``),
whose receivers run as if the login had happened there. ``GET /seen`` shows what the
worker that answers has received.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import flask
from flask_login import (  # type: ignore[import-untyped]
    LoginManager,
    UserMixin,
    login_user,
    user_logged_in,
)

import signalbus
from signalbus.flask import SignalBus


class User(UserMixin):  # type: ignore[misc]  # flask-login has no type hints
    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name


USERS = {user.id: user for user in (User(1, "alice"), User(2, "bob"), User(3, "carol"))}


def load_user(user_id: str | int) -> User | None:
    """flask-login's user loader (a str id from the session), and the bus's decoder (an
    int id from the wire)."""
    return USERS.get(int(user_id))


app = flask.Flask(__name__)  # named "app": the name the app travels under as a sender
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "example-only-not-a-secret"),  # one for all workers
    SIGNALBUS_URL=os.environ.get("SIGNALBUS_URL", "redis://localhost:6379/0"),
    SIGNALBUS_PREFIX=os.environ.get("SIGNALBUS_PREFIX", ""),
    SIGNALBUS_BRIDGE=[user_logged_in],
    # The user travels as its id and is revived through the user store in every worker;
    # a process that registers no User (audit.py) gets the id itself.
    SIGNALBUS_TYPES=[(User, lambda user: user.id, load_user)],
)
login_manager = LoginManager(app)
login_manager.user_loader(load_user)
signalbus_ext = SignalBus(app)


class Logins:
    """This process's record of the logins it received, for GET /seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[dict[str, Any]] = []

    def receive(self, sender: Any, **kwargs: Any) -> None:
        # Runs in the request that logs the user in, and in every other worker on
        # signalbus's dispatcher thread, inside an app context of this app.
        event = signalbus.current_event()  # None in the request: a bridged local send
        record = {
            "user_id": kwargs["user"].id,
            "sender": sender.name if isinstance(sender, flask.Flask) else sender,
            "sender_is_app": sender is app,  # in every worker: its own app object
            "remote": event is not None and event.remote,
        }
        with self._lock:
            self._seen.append(record)

    def seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._seen)


logins = Logins()
user_logged_in.connect(logins.receive)


@app.post("/login/<int:user_id>")
def login(user_id: int) -> flask.Response:
    user = load_user(user_id)
    if user is None:
        flask.abort(404)
    login_user(user)  # sends flask-login's user_logged_in: here, and through the bus
    return flask.jsonify(worker=os.getpid())


@app.get("/seen")
def seen() -> flask.Response:
    return flask.jsonify(worker=os.getpid(), seen=logins.seen())
