"""Real separate processes on a real server: every live process's receivers run, once."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import redis

from signalbus import Bus, Namespace

from .helpers import Child, Recorder, wait_for


def test_events_reach_every_listening_process_once_in_order(
    redis_url: str, prefix: str, make_bus: Callable[..., Bus], start_child: Callable[..., Child]
) -> None:
    count = 200
    children = [start_child("listen", redis_url, prefix, str(count), ready=False) for _ in "abc"]
    for child in children:
        child.wait_ready()
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    local = Recorder()
    signal.connect(local)
    for n in range(count):
        signal.send("web", n=n)
    # Local receivers ran synchronously, once per send.
    assert [kwargs["n"] for _, kwargs in local.calls] == list(range(count))
    for child in children:
        wait_for(lambda child=child: len(child.events()) >= count)
        assert child.finish() == 0, child.stderr()
        events = child.events()
        assert [event["kwargs"]["n"] for event in events] == list(range(count))
        assert {event["sender"] for event in events} == {"web"}
        assert {event["origin"] for event in events} == {bus.origin}
    # The sender heard its own events back on the channel and did not deliver them again.
    wait_for(lambda: bus.stats()["own_skipped"] == count)
    assert len(local.calls) == count


def test_interpreter_exit_publishes_what_was_queued(
    redis_url: str, prefix: str, make_bus: Callable[..., Bus]
) -> None:
    bus = make_bus()
    recorder = Recorder()
    Namespace("auth", bus=bus).signal("logged-in").connect(recorder)
    sender = Child("send", redis_url, prefix, "500")
    assert sender.finish() == 0, sender.stderr()
    calls = recorder.wait(500)
    assert [kwargs["n"] for _, kwargs in calls] == list(range(500))


def test_interpreter_exit_does_not_hang_when_redis_is_away(
    prefix: str, unreachable_url: str
) -> None:
    sender = Child("send", unreachable_url, prefix, "10", "--close-timeout", "0.5")
    assert sender.finish(timeout=30) == 0
    assert "10 events not published" in sender.stderr()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+ warns on fork with threads
def test_forked_child_gets_its_own_subscriber_and_keeps_receivers(
    make_bus: Callable[..., Bus], raw: redis.Redis, prefix: str
) -> None:
    bus = make_bus()
    signal = Namespace("auth", bus=bus).signal("logged-in")
    read_end, write_end = os.pipe()

    def to_pipe(sender: object, **kwargs: object) -> None:
        os.write(write_end, f"{os.getpid()}:{kwargs['n']}\n".encode())

    signal.connect(to_pipe)
    signal.send("web", n=0)  # the parent's threads are running when it forks
    bus.flush(5)
    pid = os.fork()
    if pid == 0:  # the child: wait for one remote event, then leave at once
        try:
            wait_for(lambda: bus.stats()["received"] >= 1, timeout=20)
        finally:
            os._exit(0)
    try:
        channel = f"{prefix}auth.logged-in"
        wait_for(lambda: raw.pubsub_numsub(channel) == [(channel.encode(), 2)])
        signal.send("web", n=1)
        assert bus.flush(5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        signal.disconnect(to_pipe)
        os.close(write_end)
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().split()
    # n=0 ran here only; n=1 ran here (locally) and in the child (remotely), once each.
    assert sorted(lines) == sorted([f"{os.getpid()}:0", f"{os.getpid()}:1", f"{pid}:1"])
