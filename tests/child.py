"""A separate process for multi-process tests: ``python -m tests.child ROLE URL PREFIX [N]``.

``listen``: connect a receiver, print READY, then print one JSON line per event and
exit after N events. ``send``: send N numbered events and exit without calling
flush() or close(), so interpreter exit must publish them. ``group``: connect a
receiver in group ``--group`` (taking ``--work`` seconds per event, or always raising
with ``--fail``), print READY, then one JSON line per event handled, until stdin closes.
``bridge``: bridge flask-login's ``user_logged_in``, connect a receiver to it, print
READY, then one JSON line per event, until stdin closes. ``send-on-demand``: send the
numbered events each line of stdin asks for (see :func:`send_on_demand`). A listener
also prints a JSON line for each ``history_gap`` it is told of.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import threading
from typing import Any

from flask_login import UserMixin

import signalbus
from signalbus import Namespace

auth = Namespace("auth")
logged_in = auth.signal("logged-in")


def listen(count: int) -> None:
    seen = 0

    @logged_in.connect
    def on_login(sender: Any, **kwargs: Any) -> None:
        nonlocal seen
        event = signalbus.current_event()
        assert event is not None
        print(json.dumps({"sender": sender, "kwargs": kwargs, "origin": event.origin}), flush=True)
        seen += 1

    def on_gap(sender: Any, **kwargs: Any) -> None:
        print(json.dumps({"gap": kwargs}), flush=True)

    signalbus.history_gap.connect(on_gap)
    print("READY", flush=True)
    for line in sys.stdin:  # the parent closes stdin once it has seen everything it wants
        del line
    if seen != count:
        print(f"saw {seen} events, expected {count}", file=sys.stderr)
        sys.exit(1)


def group(name: str, work: float, fail: bool, claim_idle: float) -> None:
    pause = threading.Event()

    def handle(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None
        if fail:
            raise RuntimeError(f"cannot handle {kwargs['n']}")
        pause.wait(work)  # the work a real receiver does
        line = {"n": kwargs["n"], "pid": os.getpid(), "attempt": event.attempt}
        print(json.dumps(line), flush=True)

    group_options = signalbus.Group(name, claim_idle=claim_idle, retry_backoff=0.1, max_attempts=3)
    logged_in.connect(handle, group=group_options)
    print("READY", flush=True)
    for line in sys.stdin:
        del line


@dataclasses.dataclass
class BridgeUser(UserMixin):
    """A user as flask-login sends it (and logs in), travelling as a dataclass."""

    id: int


def bridge() -> None:
    from flask_login import user_logged_in

    # Run as __main__, this file's BridgeUser is not the sender's tests.child.BridgeUser:
    # load that one, so the user arrives as the same class.
    importlib.import_module("tests.child")

    bus = signalbus.bus.default_bus()
    assert bus is not None
    bus.bridge(user_logged_in)

    def on_login(sender: Any, **kwargs: Any) -> None:
        event = signalbus.current_event()
        assert event is not None
        user = kwargs["user"]
        assert type(user).__name__ == "BridgeUser", user
        line = {"sender": sender, "user": user.id, "remote": event.remote}
        print(json.dumps(line), flush=True)

    user_logged_in.connect(on_login, weak=False)
    print("READY", flush=True)
    for line in sys.stdin:
        del line


def send(count: int) -> None:
    for n in range(count):
        logged_in.send("child", n=n)


def send_on_demand() -> None:
    """For each line ``FIRST END`` on stdin: send events FIRST to END - 1, print
    ``QUEUED END``, flush, and print ``SENT END``."""
    bus = signalbus.bus.default_bus()
    assert bus is not None
    print("READY", flush=True)
    for line in sys.stdin:
        first, end = map(int, line.split())
        for n in range(first, end):
            logged_in.send("child", n=n)
        print(f"QUEUED {end}", flush=True)
        print(f"SENT {end}" if bus.flush(30) else f"NOT FLUSHED {end}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["listen", "send", "send-on-demand", "group", "bridge"])
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("--close-timeout", type=float, default=5.0)
    parser.add_argument("--group", default="mailer")
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--claim-idle", type=float, default=30.0)
    args = parser.parse_args()
    signalbus.configure(args.url, prefix=args.prefix, close_timeout=args.close_timeout)
    if args.role == "group":
        group(args.group, args.work, args.fail, args.claim_idle)
    elif args.role == "bridge":
        bridge()
    elif args.role == "send-on-demand":
        send_on_demand()
    else:
        {"listen": listen, "send": send}[args.role](args.count)


if __name__ == "__main__":
    main()
