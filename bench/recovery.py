"""Recovery figures: numbered events through faults, what was sent against what was seen.

    .venv/bin/python bench/recovery.py        (or: make bench-recovery)

Each scenario runs on a private Redis server of its own, with one sending bus and one
receiving bus in this process, and checks the receiver with a Ledger: every event
seen exactly once, in order. It prints, per scenario, that check and the receiving
bus's counters (reconnects, events recovered from history, second copies dropped,
gaps reported), and for the network cut how fast the missed events were delivered.
Exit status 1 if any scenario lost, repeated or reordered an event.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import signalbus
from signalbus import Bus, History, Namespace
from signalbus.testing import Ledger, Proxy, RedisServer

UNLIMITED_PUBSUB = ["--client-output-buffer-limit", "pubsub 0 0 0"]
WAIT = 60.0


@contextmanager
def pair(
    server: RedisServer, receiver_url: str | None = None, **receiver_options: Any
) -> Iterator[tuple[signalbus.Signal, Bus, Ledger]]:
    """A sending signal, the receiving bus, and the ledger its receiver fills."""
    history = History(max_count=100_000)
    with (
        Bus(server.url, prefix="bench:", history=history) as sender_bus,
        Bus(receiver_url or server.url, prefix="bench:", **receiver_options) as receiver_bus,
    ):
        ledger = Ledger()
        Namespace("auth", bus=receiver_bus).signal("logged-in").connect(ledger.receiver)
        yield Namespace("auth", bus=sender_bus).signal("logged-in"), receiver_bus, ledger
        assert sender_bus.flush(WAIT)


def sent(signal: signalbus.Signal, numbers: range, **extra: Any) -> None:
    for n in numbers:
        signal.send("bench", n=n, **extra)
    assert signal.bus is not None and signal.bus.flush(WAIT)


def result(name: str, ledger: Ledger, total: int, bus: Bus, extra: str = "") -> bool:
    ledger.wait(total, WAIT)
    stats = bus.stats()
    ok = ledger.seen == list(range(total))
    counters = ", ".join(
        f"{key} {stats[key]:,}" for key in ("reconnects", "recovered", "duplicates", "gaps")
    )
    print(f"{name}\n    {ledger.report(total)}\n    {counters}{extra}", flush=True)
    return ok


def client_kill(total: int = 20_000) -> bool:
    """CLIENT KILL TYPE pubsub every 10 ms while a steady stream is sent."""
    with RedisServer(UNLIMITED_PUBSUB) as server, pair(server) as (signal, bus, ledger):
        raw = server.client()
        finished = threading.Event()

        def stream() -> None:
            pace = threading.Event()
            for start in range(0, total, 20):
                for n in range(start, start + 20):
                    signal.send("bench", n=n)
                pace.wait(0.001)
            finished.set()

        sender = threading.Thread(target=stream)
        sender.start()
        kills = 0
        pause = threading.Event()
        while not finished.is_set():
            kills += raw.client_kill_filter(_type="pubsub") > 0
            pause.wait(0.01)
        sender.join()
        raw.close()
        return result(
            f"subscriber killed {kills} times while {total:,} events were sent", ledger, total, bus
        )


def restart(persistent: bool, total: int = 3_000) -> bool:
    """Redis killed (as a crash) and started again 2 s later; a third of the events sent
    before, a third while it is down, a third after."""
    options = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    with RedisServer(options) as server, pair(server) as (signal, bus, ledger):
        third = total // 3
        sent(signal, range(third))
        ledger.wait(third, WAIT)
        server.stop()
        for n in range(third, 2 * third):  # queued by the publisher while Redis is down
            signal.send("bench", n=n)
        threading.Event().wait(2.0)
        server.start()
        sent(signal, range(2 * third, total))
        kind = "with AOF" if persistent else "without persistence"
        return result(f"Redis restarted {kind}, down 2 s, {total:,} events", ledger, total, bus)


def network_cut(total: int = 50_000) -> bool:
    """The receiver cut off while every event is sent; then the network heals."""
    with (
        RedisServer(UNLIMITED_PUBSUB) as server,
        Proxy(server.port) as proxy,
        pair(server, proxy.url) as (signal, bus, ledger),
    ):
        times: list[float] = []
        Namespace("auth", bus=bus).signal("logged-in").connect(
            lambda sender, **kwargs: times.append(time.monotonic()), weak=False
        )
        proxy.cut()
        sent(signal, range(total))
        proxy.heal()
        name = f"receiver cut off by the network while {total:,} events were sent"
        ledger.wait(total, WAIT)
        rate = total / (times[-1] - times[0])
        return result(name, ledger, total, bus, f"\n    delivered from history at {rate:,.0f}/s")


def slow_receiver(total: int = 4_000) -> bool:
    """A receiver blocked at first, so Redis's 32 kB pub/sub buffer limit cuts it off."""
    gate = threading.Event()
    limit = ["--client-output-buffer-limit", "pubsub 32kb 16kb 1"]
    with RedisServer(limit) as server, pair(server, dispatch_backlog=5) as (signal, bus, ledger):
        Namespace("auth", bus=bus).signal("logged-in").connect(
            lambda sender, **kwargs: gate.wait(WAIT), weak=False
        )
        sent(signal, range(total), padding="x" * 4000)
        gate.set()
        return result(
            f"slow receiver cut off by Redis, {total:,} events of 4 kB", ledger, total, bus
        )


def restart_while_idle(cycles: int = 5, per_burst: int = 1_000) -> bool:
    """Redis killed (AOF on) while the sender is idle, then a burst: the first event of
    each burst is written on the connection the crash left dead."""
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisServer(aof) as server, pair(server) as (signal, bus, ledger):
        total = 0
        for _ in range(cycles):
            sent(signal, range(total, total + per_burst))
            total += per_burst
            ledger.wait(total, WAIT)
            server.stop()
            server.start()
        sent(signal, range(total, total + per_burst))
        total += per_burst
        name = f"Redis killed {cycles} times while the sender was idle, then a burst"
        return result(name, ledger, total, bus)


def nothing_seen_then_lost(total: int = 2_000) -> bool:
    """A receiver cut off before its first event; Redis restarted without persistence
    meanwhile: the events are gone, and the receiver must say so."""
    gaps: list[str] = []
    with (
        RedisServer(UNLIMITED_PUBSUB) as server,
        Proxy(server.port) as proxy,
        pair(server, proxy.url) as (signal, bus, ledger),
    ):
        signalbus.history_gap.connect(
            lambda sender, **kwargs: gaps.append(kwargs["channel"]), weak=False
        )
        proxy.cut()
        sent(signal, range(total))
        server.stop()
        server.start()
        proxy.heal()
        deadline = time.monotonic() + WAIT
        while not gaps and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        sent(signal, range(total, total + 10))
        ledger.wait(10, WAIT)
        ok = ledger.seen == list(range(total, total + 10)) and len(gaps) == 1
        print(
            f"receiver that had seen nothing, {total:,} events lost in a restart without "
            f"persistence\n    gap reported: {'yes' if gaps else 'NO'} (gaps "
            f"{bus.stats()['gaps']}); then seen {len(ledger.seen)} of the 10 sent after",
            flush=True,
        )
        return ok


def frozen(total: int = 3_000, seconds: float = 2.0) -> bool:
    """The server frozen (SIGSTOP) while events are sent: send() never waits longer than
    block_timeout, and everything arrives once thawed."""
    with RedisServer(UNLIMITED_PUBSUB) as server, pair(server) as (signal, bus, ledger):
        slowest = 0.0
        thaw = threading.Timer(seconds, server.resume)
        server.pause()
        thaw.start()
        for n in range(total):
            started = time.monotonic()
            signal.send("bench", n=n)
            slowest = max(slowest, time.monotonic() - started)
        thaw.join()
        assert signal.bus is not None and signal.bus.flush(WAIT)
        name = f"server frozen {seconds:.0f} s while {total:,} events were sent"
        return result(name, ledger, total, bus, f"\n    slowest send() {slowest * 1000:.1f} ms")


def client_pause(total: int = 3_000) -> bool:
    """CLIENT PAUSE (every client, 1 s) in the middle of a stream."""
    with RedisServer(UNLIMITED_PUBSUB) as server, pair(server) as (signal, bus, ledger):
        raw = server.client()
        sent(signal, range(total // 2))
        raw.client_pause(1000, all=True)
        sent(signal, range(total // 2, total))
        raw.close()
        return result(f"CLIENT PAUSE 1 s while {total:,} events were sent", ledger, total, bus)


SCENARIOS: list[Callable[[], bool]] = [
    client_kill,
    lambda: restart(persistent=True),
    lambda: restart(persistent=False),
    restart_while_idle,
    nothing_seen_then_lost,
    frozen,
    client_pause,
    network_cut,
    slow_receiver,
]


def main() -> int:
    started = time.monotonic()
    results = [scenario() for scenario in SCENARIOS]
    took = time.monotonic() - started
    print(f"\n{sum(results)} of {len(results)} scenarios exactly once and in order, {took:.0f}s")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
