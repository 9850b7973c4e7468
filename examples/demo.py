"""signalbus demo: one blinker signal, three processes, one Redis server.

Run it with ``make demo`` (or ``python examples/demo.py``). What you are seeing:

1. This process (``[demo]``) starts a private ``redis-server`` on a free port, or uses
   ``$SIGNALBUS_URL`` if it is set (then it starts nothing). It launches each of the
   other processes as ``python examples/demo.py --role ...``; every one of them
   imports the signals of ``auth_signals.py`` and calls ``signalbus.configure()`` once.
2. Two listeners connect receivers to ``auth.logged-in`` and print READY, which
   ``connect()`` makes safe: it returns once Redis has confirmed the subscription.

   - ``listener-1`` registers its own ``App`` object under the name "web" and connects
     with ``@user_logged_in.connect_via(app)``, so it gets only what "web" sends.
   - ``listener-2`` connects to any sender, registers no App (so the sender "web"
     reaches it as the plain str ``'web'``), and prints ``signalbus.current_event()``.

3. Once both are ready, the ``sender`` starts: it registers its ``App`` as "web",
   connects a local receiver, and sends four ``user_logged_in`` events, three from the
   app and one from the plain str sender ``'sso-bridge'``. Its local receiver runs
   once per send, synchronously, before ``send()`` returns (as with blinker); the
   listeners' receivers run at the same time in their own processes.
4. The demo checks that every listener got every event meant for it exactly once,
   stops everything and exits 0 (or names what went wrong and exits 1).

Lines starting with "@" are records the children print for the demo to check
delivery with; it does not show them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import redis
from auth_signals import user_logged_in

import signalbus
from signalbus.testing import RedisServer

# What the sender sends: (sender name, user_id, ip). "web" is the sender's App object;
# "sso-bridge" is a plain str, which travels as itself and needs no registration.
LOGINS = [
    ("web", 42, "203.0.113.7"),
    ("web", 7, "198.51.100.23"),
    ("sso-bridge", 1001, "192.0.2.200"),
    ("web", 42, "203.0.113.9"),
]
# Each listener, and the one sender it listens to (None: any sender).
LISTENERS: dict[str, str | None] = {"listener-1": "web", "listener-2": None}

READY_TIMEOUT = 15.0  # for the listeners to start and subscribe
RUN_TIMEOUT = 20.0  # for the sender to send and the listeners to receive, then exit
LISTENER_TIMEOUT = 15.0  # how long a listener waits for its events
DUPLICATE_GRACE = 0.3  # how long a listener keeps listening after its last event
SEND_PAUSE = 0.15  # between two sends, so you can watch each event arrive


class App:
    """Stands for a Flask app: an object that cannot cross a process boundary.

    Each process makes its own and registers it under the same name, "web".
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<App {self.name!r}>"


# -- the child processes ------------------------------------------------------------


def say(role: str, text: str) -> None:
    print(f"[{role} pid {os.getpid()}] {text}", flush=True)


def record(*fields: object) -> None:
    """Print a line for the demo process to check delivery with (it does not show it)."""
    print("@" + " ".join(str(field) for field in fields), flush=True)


def setup_logging(role: str) -> None:
    """signalbus logs problems (a receiver that raised, a lost connection) as warnings."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"[{role} pid {os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )


def run_listener(name: str, prefix: str) -> int:
    setup_logging(name)
    only_from = LISTENERS[name]
    expected = sum(1 for sender, _, _ in LOGINS if only_from in (None, sender))
    received: list[str] = []
    all_received = threading.Event()

    def on_login(sender: object, *, user_id: int, ip: str, at: datetime.datetime) -> None:
        # Runs on signalbus's dispatcher thread in this process, for events sent elsewhere.
        event = signalbus.current_event()
        assert event is not None  # always set for an event that came through a bus
        say(
            name,
            f"{event.channel} from {sender!r} (sent by {event.origin}): "
            f"user_id={user_id} ip={ip} at={at:%H:%M:%S.%f} ({type(at).__name__})",
        )
        if only_from is None:
            delay_ms = (time.time() - event.timestamp) * 1000
            say(
                name,
                f"  current_event(): id={event.id} remote={event.remote} "
                f"replayed={event.replayed}, {delay_ms:.1f} ms after send()",
            )
        record("got", event.id)
        received.append(event.id)
        if len(received) >= expected:
            all_received.set()

    with signalbus.configure(os.environ["SIGNALBUS_URL"], prefix=prefix) as bus:
        if only_from is None:
            user_logged_in.connect(on_login)
            wants = "from any sender"
        else:
            # Events sent by the sender's "web" arrive with *this* object as their sender,
            # so blinker's sender filtering works across processes.
            app = App(only_from)
            bus.register_sender(app, only_from)
            user_logged_in.connect_via(app)(on_login)  # as @user_logged_in.connect_via(app)
            wants = f"only from {app!r}"
        # connect() returns once Redis has confirmed the subscription (or, after the bus's
        # subscribe_timeout, logs a warning): from now on, no event sent is missed.
        say(name, f"READY: subscribed to {user_logged_in.channel}, {wants}; expecting {expected}")
        record("ready")

        if not all_received.wait(LISTENER_TIMEOUT):
            say(name, f"gave up after {LISTENER_TIMEOUT:.0f}s with {len(received)}/{expected}")
            return 1
        time.sleep(DUPLICATE_GRACE)  # a duplicate would arrive now
        duplicates = len(received) - len(set(received))
        if duplicates:
            say(name, f"got {duplicates} duplicate event(s)")
            return 1
        say(name, f"got all {expected} events, once each; closing the bus and exiting")
    return 0


def run_sender(prefix: str) -> int:
    setup_logging("sender")
    local_calls: list[int] = []

    with signalbus.configure(os.environ["SIGNALBUS_URL"], prefix=prefix) as bus:
        app = App("web")
        bus.register_sender(app, "web")

        @user_logged_in.connect
        def audit_here(sender: App | str, *, user_id: int, **_: object) -> str:
            # A receiver in the sending process: blinker semantics, it runs inside send().
            event = signalbus.current_event()
            assert event is not None
            local_calls.append(user_id)
            say(
                "sender",
                f"  local receiver: user_id={user_id} in thread "
                f"{threading.current_thread().name}, remote={event.remote}",
            )
            record("sent", event.id, sender.name if isinstance(sender, App) else sender)
            return f"audited {user_id}"

        for sender_name, user_id, ip in LOGINS:
            sender = app if sender_name == "web" else sender_name
            say("sender", f"user_logged_in.send({sender!r}, user_id={user_id}, ip={ip!r}, at=now)")
            results = user_logged_in.send(
                sender, user_id=user_id, ip=ip, at=datetime.datetime.now(datetime.UTC)
            )
            say("sender", f"  send() returned {[value for _, value in results]}")
            time.sleep(SEND_PAUSE)

        if not bus.flush(timeout=5):
            say("sender", "bus.flush() timed out: the events did not all reach Redis")
            return 1
        say("sender", f"bus.flush(): all {len(LOGINS)} events are on the Redis server")
        # Our own events come back from Redis too, and must be skipped, not run again.
        time.sleep(DUPLICATE_GRACE)
        if len(local_calls) != len(LOGINS):
            say("sender", f"local receiver ran {len(local_calls)} times for {len(LOGINS)} sends")
            return 1
        say("sender", f"the local receiver ran {len(local_calls)} times, once per send()")
    return 0


# -- the demo process -------------------------------------------------------------------

# Each child's output lines, as (child, line), and (child, None) once it closed its output.
Lines = queue.Queue[tuple["Child", str | None]]


def tell(text: str) -> None:
    print(f"[demo] {text}", flush=True)


@dataclasses.dataclass
class Child:
    """A child process whose output a thread relays to a queue shared by all."""

    name: str
    process: subprocess.Popen[str]
    ready: bool = False
    finished: bool = False
    sent: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    got: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], lines: Lines) -> Child:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        child = cls(name, process)
        threading.Thread(target=child._relay, args=(lines,), daemon=True).start()
        return child

    def _relay(self, lines: Lines) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            lines.put((self, line.rstrip("\n")))
        lines.put((self, None))

    def handle(self, line: str | None) -> None:
        if line is None:
            self.finished = True
        elif line == "@ready":
            self.ready = True
        elif line.startswith("@sent "):
            _, event_id, sender = line.split(" ", 2)
            self.sent.append((event_id, sender))
        elif line.startswith("@got "):
            self.got.append(line.split(" ", 1)[1])
        else:
            print(line, flush=True)

    def failed(self) -> bool:
        """Whether it has exited with an error (its last output may still be in the queue)."""
        return self.finished and self.process.wait(timeout=10) != 0

    def kill(self) -> None:
        if self.process.poll() is None:
            tell(f"killing {self.name} (pid {self.process.pid})")
            self.process.kill()
        self.process.wait(timeout=10)


def relay_until(done: Callable[[], bool], lines: Lines, timeout: float) -> bool:
    """Show the children's output until ``done()``; False if ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while not done():
        try:
            child, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        child.handle(line)
    return True


def run_demo(url: str) -> int:
    # Children find the server in $SIGNALBUS_URL (no password on a command line). The
    # prefix keeps this run's channels apart from any other user of the same server.
    env = {**os.environ, "SIGNALBUS_URL": url}
    prefix = f"signalbus-demo-{secrets.token_hex(4)}."
    lines: Lines = queue.Queue()
    children: list[Child] = []
    try:
        tell(f"starting {' and '.join(LISTENERS)} (Redis channels prefixed {prefix!r})")
        for name in LISTENERS:
            args = ["--role=listener", f"--name={name}", f"--prefix={prefix}"]
            children.append(Child.start(name, args, env, lines))
        listeners = list(children)
        if not relay_until(
            lambda: all(c.ready or c.finished for c in listeners), lines, READY_TIMEOUT
        ):
            return failed(f"the listeners were not READY within {READY_TIMEOUT:.0f}s")
        for child in listeners:
            if not child.ready:
                code = child.process.wait(timeout=10)
                return failed(f"{child.name} exited with code {code} before it was READY")

        tell(f"all listeners READY; starting the sender to send {len(LOGINS)} events")
        sender = Child.start("sender", ["--role=sender", f"--prefix={prefix}"], env, lines)
        children.append(sender)
        # Until all have exited, or one failed: then there is no point waiting for the rest.
        if not relay_until(
            lambda: all(c.finished for c in children) or any(c.failed() for c in children),
            lines,
            RUN_TIMEOUT,
        ):
            unfinished = ", ".join(
                f"{c.name} ({len(c.got)} events received)" if c in listeners else c.name
                for c in children
                if not c.finished
            )
            return failed(f"still running after {RUN_TIMEOUT:.0f}s: {unfinished}")
        for child in children:
            if child.failed():
                return failed(f"{child.name} exited with code {child.process.returncode}")
            child.process.wait(timeout=10)
        return check(listeners, sender)
    finally:
        for child in children:
            child.kill()


def check(listeners: list[Child], sender: Child) -> int:
    """Compare what each listener got with what the sender sent; 0 if all is well."""
    problems = []
    if len(sender.sent) != len(LOGINS):
        problems.append(f"the sender sent {len(sender.sent)} events, not {len(LOGINS)}")
    for listener in listeners:
        only_from = LISTENERS[listener.name]
        expected = {event_id for event_id, name in sender.sent if only_from in (None, name)}
        counts = collections.Counter(listener.got)
        missing = expected - counts.keys()
        extra = counts.keys() - expected
        repeated = sorted(event_id for event_id, count in counts.items() if count > 1)
        for what, ids in (("missed", missing), ("should not have got", extra)):
            if ids:
                problems.append(f"{listener.name} {what} {', '.join(sorted(ids))}")
        if repeated:
            problems.append(f"{listener.name} got more than once: {', '.join(repeated)}")
        if not (missing or extra or repeated):
            tell(f"{listener.name}: all {len(expected)} events meant for it, each exactly once")
    if problems:
        return failed("; ".join(problems))
    tell("OK: every listener got every event exactly once; the sender's local receiver ran")
    tell("    once per send(), synchronously, and never again for its own events.")
    return 0


def failed(why: str) -> int:
    tell(f"FAILED: {why}")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description="signalbus demo (see the docstring)")
    parser.add_argument("--role", choices=["demo", "listener", "sender"], default="demo")
    parser.add_argument("--name", choices=list(LISTENERS), help="which listener")
    parser.add_argument("--prefix", default="", help="channel prefix for this run")
    args = parser.parse_args()
    if args.role == "listener":
        if args.name is None:
            parser.error("--role=listener needs --name")
        return run_listener(args.name, args.prefix)
    if args.role == "sender":
        return run_sender(args.prefix)

    url = os.environ.get("SIGNALBUS_URL")
    if url:
        parts = urlsplit(url)  # not the whole URL: it may hold a password
        where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
        tell(f"using the Redis server in $SIGNALBUS_URL ({where})")
        try:  # fail early and clearly rather than with listeners that never hear anything
            options = dict(protocol=2, socket_timeout=5, socket_connect_timeout=5)  # as signalbus
            with redis.Redis.from_url(url, **options) as client:
                client.ping()
        except (redis.RedisError, ValueError) as exc:
            return failed(f"cannot reach the Redis server in $SIGNALBUS_URL: {exc}")
        return run_demo(url)
    try:
        server = RedisServer()
    except RuntimeError as exc:
        return failed(str(exc))
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        return failed(f"could not start a Redis server: {exc}")
    tell(f"started a private Redis server ({Path(server.binary).name}) at {server.url}")
    try:
        return run_demo(server.url)
    finally:
        server.close()
        tell("stopped the Redis server")


if __name__ == "__main__":
    sys.exit(main())
