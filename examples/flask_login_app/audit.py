"""An audit process that hears the app's logins without importing Flask or flask-login.

``python audit.py FILE`` (with ``SIGNALBUS_URL`` and ``SIGNALBUS_PREFIX`` set, as for
the app) appends one JSON line per login to FILE. The app bridges flask-login's
``user_logged_in``, whose channel is ``flask_login.signals.logged-in``; here that is
a plain signalbus signal of that name. This process registered neither the app nor
the ``User`` type, so they arrive in their wire form: the sender as the app's name,
the user as what the app's ``encode`` returned, its id.

It prints READY once subscribed, and exits cleanly on SIGTERM, SIGINT or the end of
its stdin.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import signalbus
from signalbus import Namespace

logged_in = Namespace("flask_login.signals").signal("logged-in")


class AuditLog:
    """Writes one JSON line per login, flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def receive(self, sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None  # an event from another process always has one
        line = {
            "user_id": kwargs["user"],
            "sender": sender,
            "event": event.id,
            "origin": event.origin,  # host:pid of the worker that logged the user in
        }
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()


def stop_on_signal_or_end_of_stdin() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stop.set())

    def read_to_the_end() -> None:
        for _ in sys.stdin:
            pass
        stop.set()

    threading.Thread(target=read_to_the_end, daemon=True).start()
    return stop


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} FILE", file=sys.stderr)
        return 2
    stop = stop_on_signal_or_end_of_stdin()
    url, prefix = os.environ["SIGNALBUS_URL"], os.environ.get("SIGNALBUS_PREFIX", "")
    with Path(argv[1]).open("a", encoding="utf-8") as out, signalbus.configure(url, prefix=prefix):
        logged_in.connect(AuditLog(out).receive, weak=False)
        # connect() returned once Redis confirmed the subscription: no login is missed now.
        print("READY", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
