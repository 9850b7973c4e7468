"""Real forks: a child keeps receiving whatever state its parent was in when it forked."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal as os_signal
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import signalbus.bus as bus_module
from signalbus import Bus, Namespace

from .helpers import Recorder, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads


@contextlib.contextmanager
def forked(child: Callable[[], str]) -> Iterator[Callable[[float], str]]:
    """Fork; the child runs ``child`` and sends back what it returns, which the body
    reads (within a timeout) with the function it is given. The child never outlives
    the block."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, child().encode())
        finally:
            os._exit(0)
    os.close(write_end)

    def report(timeout: float) -> str:
        ready, _, _ = select.select([read_end], [], [], timeout)
        assert ready, f"the child reported nothing within {timeout}s"
        return os.read(read_end, 65536).decode()

    try:
        yield report
    finally:
        os.close(read_end)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, os_signal.SIGKILL)
        os.waitpid(pid, 0)


def subscribers(raw: redis.Redis, channel: str) -> int:
    return int(raw.pubsub_numsub(channel)[0][1])


@pytest.mark.parametrize("master", [False, True], ids=["parent-receiving", "master-stopped"])
def test_a_child_forked_right_after_a_receiver_went_still_receives(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str, master: bool
) -> None:
    bus = make_bus()
    auth = Namespace("auth", bus=bus)
    received = threading.Event()
    auth.signal("logged-in").connect(lambda sender, **kwargs: received.set(), weak=False)
    gone = Recorder()
    auth.signal("logged-out").connect(gone)
    if master:  # a gunicorn --preload master, once it forked its first worker
        bus.stop_receiving()
    # The parent's reader has not noticed yet (a master's never will) that this
    # channel lost its last receiver: the child's fork handling finds it so.
    auth.signal("logged-out").disconnect(gone)
    with forked(lambda: "received" if received.wait(20) else "deaf") as report:
        channel = f"{prefix}auth.logged-in"
        wait_for(lambda: subscribers(raw, channel) == (1 if master else 2))
        Namespace("auth", bus=make_bus()).signal("logged-in").send("web")
        assert report(20) == "received"


def test_a_bus_whose_fork_handling_fails_leaves_the_others_receiving(
    make_bus: Callable[..., Bus],
    raw: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    buses = [make_bus(), make_bus()]
    received = [threading.Event(), threading.Event()]
    for bus, event in zip(buses, received, strict=True):
        Namespace("auth", bus=bus).signal("logged-in").connect(
            lambda sender, event=event, **kwargs: event.set(), weak=False
        )
    live = weakref.WeakSet(buses)
    monkeypatch.setattr(bus_module, "_live_buses", live)
    failing = next(iter(live))  # the fork hook handles the buses in this order

    def boom() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(failing, "_after_fork_in_child", boom)
    other = buses.index(next(bus for bus in buses if bus is not failing))

    def child() -> str:
        logged = [
            r for r in caplog.records if "handling a fork failed" in r.getMessage() and r.exc_info
        ]
        return json.dumps(
            {
                "received": received[other].wait(20),
                "logged": [str(r.exc_info[1]) for r in logged if r.exc_info],
            }
        )

    with forked(child) as report:
        channel = f"{prefix}auth.logged-in"
        wait_for(lambda: subscribers(raw, channel) == 3)  # both here, one in the child
        Namespace("auth", bus=make_bus()).signal("logged-in").send("web")
        outcome: dict[str, Any] = json.loads(report(20))
    assert outcome == {"received": True, "logged": ["boom"]}
