"""Runs one measurement across real processes: receivers first, then one sender.

Every process is started with the ``spawn`` method. Receivers report readiness (their
subscription is confirmed) through a multiprocessing Event before the sender starts;
every process reports its figures, or its traceback, on one result queue. All waits
are bounded, and every process still alive at the end is terminated.

Times are ``time.monotonic()``: CLOCK_MONOTONIC, which on Linux is one clock for the
whole system, so a time taken in the sender can be compared with one taken in a
receiver.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from typing import Any

from sides import SIDES, channel, raw_client

READY_TIMEOUT = 30.0
IDLE_TIMEOUT = 30.0

_ctx: SpawnContext = multiprocessing.get_context("spawn")


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which process and why."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One multi-process measurement of one side."""

    side: str
    url: str
    prefix: str
    count: int
    """Events the sender sends."""
    receivers: int = 1
    rate: float | None = None
    """Events per second, sent one at a time; None sends as fast as possible."""
    warmup: int = 0
    """The first events, left out of the latencies."""
    latencies: bool = False
    timeout: float = 120.0
    """For the whole run, once the receivers are ready."""


@dataclasses.dataclass
class Outcome:
    started: float
    """When the sender began its first send."""
    sent: float
    """When everything sent was on the server."""
    sender_stats: dict[str, int]
    receivers: list[dict[str, Any]]

    @property
    def last_received(self) -> float:
        return float(max(r["last"] for r in self.receivers))

    @property
    def latencies(self) -> list[float]:
        return [latency for r in self.receivers for latency in r["latencies"]]


class Tally:
    """A receiver's count of what arrived; says when it has all it expects."""

    def __init__(self, expected: int, warmup: int, latencies: bool) -> None:
        self.expected = expected
        self.warmup = warmup
        self.count = 0
        self.last = 0.0
        self.latencies: list[float] | None = [] if latencies else None

    def __call__(self, kwargs: dict[str, Any]) -> bool:
        now = time.monotonic()
        self.count += 1
        if self.latencies is not None and self.count > self.warmup:
            self.latencies.append(now - kwargs["ts"])
        if self.count < self.expected:
            return False
        self.last = now
        return True

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last, "latencies": self.latencies or []}


# -- the child processes -------------------------------------------------------------


def _log_to_stderr() -> None:
    """signalbus logs what it drops or waits for: show it, labelled with the process."""
    logging.basicConfig(format="  [%(processName)s] %(name)s: %(message)s")


def _receiver_main(run: Run, index: int, ready: EventType, results: Queue[Any]) -> None:
    _log_to_stderr()
    try:
        tally = Tally(run.count, run.warmup, run.latencies)
        SIDES[run.side].receive(run.url, run.prefix, tally, ready.set, IDLE_TIMEOUT)
        results.put(("receiver", index, tally.report()))
    except BaseException:
        results.put(("error", f"receiver {index}", traceback.format_exc()))


def _sender_main(run: Run, results: Queue[Any]) -> None:
    _log_to_stderr()
    try:
        sender = SIDES[run.side].sender(run.url, run.prefix, paced=run.rate is not None)
        started = time.monotonic()
        if run.rate is None:
            for i in range(run.count):
                sender.send(i, time.monotonic())
        else:
            _send_paced(sender.send, run.count, run.rate, started)
        stats = sender.finish()
        results.put(("sender", 0, {"started": started, "sent": time.monotonic(), "stats": stats}))
    except BaseException:
        results.put(("error", "sender", traceback.format_exc()))


def _send_paced(
    send: Callable[[int, float], None], count: int, rate: float, started: float
) -> None:
    """Send one event every ``1/rate`` s, on an absolute schedule so delays do not add up."""
    interval = 1.0 / rate
    for i in range(count):
        delay = started + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(i, time.monotonic())


# -- the parent ----------------------------------------------------------------------


def measure(run: Run) -> Outcome:
    """Start the receivers, wait for them to be ready, start the sender, collect."""
    results: Queue[Any] = _ctx.Queue()
    processes: list[SpawnProcess] = []
    outcome = None
    try:
        readies = [_ctx.Event() for _ in range(run.receivers)]
        for index, ready in enumerate(readies):
            name = f"{run.side}-receiver-{index}"
            processes.append(_start(name, _receiver_main, run, index, ready, results))
        _wait_ready(readies, results)
        if SIDES[run.side].subscribes:
            _check_subscribed(run)
        processes.append(_start(f"{run.side}-sender", _sender_main, run, results))
        outcome = _collect(run, results)
        return outcome
    finally:
        _stop(processes, grace=0.0 if outcome is None else 5.0)
        results.close()


def _start(name: str, target: Any, *args: Any) -> SpawnProcess:
    process = _ctx.Process(target=target, args=args, name=name, daemon=True)
    process.start()
    return process


def _wait_ready(readies: list[EventType], results: Queue[Any]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    for index, ready in enumerate(readies):
        while not ready.wait(0.1):
            _raise_reported_error(results)
            if time.monotonic() > deadline:
                raise BenchError(f"receiver {index} not ready within {READY_TIMEOUT:.0f}s")


def _check_subscribed(run: Run) -> None:
    """Ask the server, not the receivers: is each of them subscribed to the channel?"""
    client = raw_client(run.url)
    try:
        [(_, subscribers)] = client.pubsub_numsub(channel(run.prefix))
    finally:
        client.close()
    if subscribers != run.receivers:
        raise BenchError(f"{subscribers} subscribers on the channel, {run.receivers} expected")


def _raise_reported_error(results: Queue[Any]) -> None:
    try:
        kind, who, payload = results.get_nowait()
    except queue.Empty:
        return
    if kind == "error":
        raise BenchError(f"{who} failed:\n{payload}")
    raise BenchError(f"unexpected early result from {kind} {who}")


def _collect(run: Run, results: Queue[Any]) -> Outcome:
    deadline = time.monotonic() + run.timeout
    sender: dict[str, Any] | None = None
    receivers: dict[int, dict[str, Any]] = {}
    while sender is None or len(receivers) < run.receivers:
        try:
            kind, who, payload = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(
                f"{run.side}: no complete result within {run.timeout:.0f}s "
                f"(sender {'done' if sender else 'not done'}, "
                f"{len(receivers)}/{run.receivers} receivers done)"
            ) from None
        if kind == "error":
            raise BenchError(f"{run.side} {who} failed:\n{payload}")
        if kind == "sender":
            sender = payload
        else:
            receivers[who] = payload
    return Outcome(sender["started"], sender["sent"], sender["stats"], list(receivers.values()))


def _stop(processes: list[SpawnProcess], grace: float) -> None:
    """Give processes ``grace`` seconds to exit, then terminate (or kill) the others."""
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
