"""signalbus benchmarks: signalbus against the best plain redis-py (and blinker) does.

    .venv/bin/python bench/run.py [--quick] [--rounds N]      (or: make bench)

Starts one private Redis server and measures, against it, with real processes:

(a) throughput, one sending process to one receiving process;
(b) one-way latency p50/p99 at a steady 2,000 events/s;
(c) the caller's cost of ``send()`` with one local receiver, against plain blinker;
(d) fan-out from one sending process to four receiving processes;
(e) group delivery: (a) to one group receiver, against one broadcast receiver.

(a), (b) and (c) run with history kept (the default) and with history off; (a) and (c)
also run with a typed signal (a pydantic schema, validated by the sender and by the
receivers) and with a signed bus (HMAC-SHA256, signed and checked), so those rows show
what validation and signing cost against the plain rows.

BENCHMARKS.md says what each figure means and how the baseline is defined.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blinker
import redis
import redis.utils
from harness import BenchError, Outcome, Run, measure
from sides import IP, SENDER, SIDES, BusSide

import signalbus
from signalbus.testing import RedisServer

# A receiver that falls behind a burst makes Redis buffer for it; with the default
# limits Redis would cut it off mid-run. Both sides run against this same server.
SERVER_ARGS = ["--client-output-buffer-limit", "pubsub 0 0 0"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    throughput: int = 200_000
    latency: int = 10_000
    warmup: int = 1_000
    rate: float = 2_000.0
    calls: int = 100_000
    repeats: int = 5
    fanout: int = 100_000
    fanout_receivers: int = 4


QUICK = Sizes(throughput=50_000, latency=2_000, warmup=200, calls=20_000, repeats=3, fanout=10_000)


@dataclasses.dataclass(frozen=True)
class Target:
    """signalbus / baseline must be ``at_least`` or at most ``limit``."""

    limit: float
    at_least: bool

    def met(self, ratio: float) -> bool:
        return ratio >= self.limit if self.at_least else ratio <= self.limit

    def __str__(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.limit:g}x"


@dataclasses.dataclass
class Row:
    """One line of the table: a figure per side and round, compared as medians."""

    label: str
    unit: str
    target: Target
    baseline: str = "raw"
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, side: str, value: float) -> None:
        self.samples.setdefault(side, []).append(value)

    def figure(self, side: str) -> float | None:
        values = self.samples.get(side)
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        ours, theirs = self.figure("signalbus"), self.figure(self.baseline)
        return ours / theirs if ours is not None and theirs else None


@dataclasses.dataclass
class Bench:
    url: str
    sizes: Sizes
    rounds: int
    errors: list[str] = dataclasses.field(default_factory=list)

    def prefix(self, scenario: str, side: str) -> str:
        """A channel prefix of its own for every measurement."""
        return f"bench-{uuid.uuid4().hex[:8]}-{scenario}-{side}:"

    def each_round(
        self,
        scenario: str,
        measure_side: Callable[[str, str], Outcome],
        sides: tuple[str, ...] = ("raw", "signalbus"),
    ) -> Iterator[tuple[str, Outcome]]:
        """``measure_side(side, prefix)`` for both sides, alternating, round after round.

        Alternating spreads the machine's noise over both sides; a failure is noted and
        skipped, not raised.
        """
        for number in range(1, self.rounds + 1):
            for side in sides:
                progress(f"({scenario}) {side}, round {number}/{self.rounds}")
                try:
                    outcome = measure_side(side, self.prefix(scenario, side))
                except BenchError as exc:
                    self.errors.append(f"({scenario}) {side}: {exc}")
                    progress(f"({scenario}) {side} FAILED: {exc}")
                    continue
                yield side, outcome


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- the scenarios ------------------------------------------------------------------


# (a), (b), (c) run each variant: (title suffix, signalbus side in sides.SIDES). With
# history kept (the default) and with history=False, so the table shows what keeping
# history costs.
VARIANTS = (("", "signalbus"), (", history off", "signalbus-no-history"))
# (a) and (c) also run these, with history kept, so the table shows what a schema
# (validated on send() and again in every receiving process) and signing cost.
FEATURE_VARIANTS = ((", typed", "signalbus-typed"), (", signed", "signalbus-signed"))


def throughput(bench: Bench) -> list[Row]:
    count = bench.sizes.throughput
    rows = []
    for title, bus_side in VARIANTS + FEATURE_VARIANTS:
        row = Row(f"(a) throughput 1 -> 1{title}", "events/s", Target(0.7, at_least=True))
        row.notes.append(f"{count:,} events, first send to last receive")
        run = functools.partial(Run, count=count)
        for side, outcome in bench.each_round("a", _measuring(bench, bus_side, run)):
            row.add(side, count / (outcome.last_received - outcome.started))
            _note_drops(row, side, outcome)
        rows.append(row)
    return rows


def _measuring(
    bench: Bench, bus_side: str, run: Callable[..., Run]
) -> Callable[[str, str], Outcome]:
    """Measure ``run`` for a side, with ``bus_side`` standing in for signalbus."""

    def one(side: str, prefix: str) -> Outcome:
        return measure(run(bus_side if side == "signalbus" else side, bench.url, prefix))

    return one


def latency(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    count = sizes.warmup + sizes.latency
    rows = []
    for title, bus_side in VARIANTS:
        rate = f"{sizes.rate:,.0f}/s{title}"
        p50 = Row(f"(b) latency p50 @ {rate}", "µs", Target(1.3, at_least=False))
        p99 = Row(f"(b) latency p99 @ {rate}", "µs", Target(1.5, at_least=False))
        p50.notes.append(
            f"{sizes.latency:,} events after {sizes.warmup:,} warm-up, sent one at a time"
        )
        slowest: dict[str, float] = {}
        run = functools.partial(
            Run, count=count, rate=sizes.rate, warmup=sizes.warmup, latencies=True
        )
        for side, outcome in bench.each_round("b", _measuring(bench, bus_side, run)):
            cuts = statistics.quantiles(outcome.latencies, n=100, method="inclusive")
            p50.add(side, cuts[49] * 1e6)
            p99.add(side, cuts[98] * 1e6)
            sent_rate = count / (outcome.sent - outcome.started)
            slowest[side] = min(sent_rate, slowest.get(side, sent_rate))
        p99.notes.append(
            "slowest send rate: "
            + ", ".join(f"{side} {value:,.0f}/s" for side, value in slowest.items())
        )
        rows += [p50, p99]
    return rows


def send_cost(bench: Bench) -> list[Row]:
    """In this process: no remote receivers, but the signal's bus encodes and queues."""
    sizes = bench.sizes
    progress("(c) blinker")
    plain = blinker.Signal()
    plain.connect(_receiver)
    blinker_cost, _ = _time_sends(plain.send, sizes, lambda: None)
    rows = []
    for title, bus_side in VARIANTS + FEATURE_VARIANTS:
        row = Row(
            f"(c) send() cost, 1 local receiver{title}",
            "µs/call",
            Target(4.0, at_least=False),
            "blinker",
        )
        row.notes.append(f"best of {sizes.repeats} x {sizes.calls:,} calls, in one process")
        row.add("blinker", blinker_cost)
        progress(f"(c) {bus_side}")
        prefix = bench.prefix("c", bus_side)
        side = SIDES[bus_side]
        assert isinstance(side, BusSide)
        # Room for a whole repeat: the queue is flushed between repeats, never overflows.
        with side.bus(bench.url, prefix, queue_size=2 * sizes.calls) as bus:
            signal = side.signal(bus)
            signal.connect(_receiver)
            cost, flushed = _time_sends(signal.send, sizes, bus.flush)
        row.add("signalbus", cost)
        stats = bus.stats()
        row.notes.append(f"signalbus {flushed:.2f} µs/call counting the flush")
        row.notes.append(f"signalbus published {stats['published']:,}, dropped {stats['dropped']}")
        rows.append(row)
    return rows


def _receiver(sender: Any, **kwargs: Any) -> None:
    return None


def _time_sends(
    send: Callable[..., Any], sizes: Sizes, flush: Callable[[], Any]
) -> tuple[float, float]:
    """Best µs per call over the repeats: the calls alone, and the calls plus ``flush()``."""
    best = best_flushed = math.inf
    ts = time.time()
    for _ in range(sizes.repeats):
        flush()
        start = time.perf_counter()
        for i in range(sizes.calls):
            send(SENDER, user_id=i, ip=IP, ts=ts)
        sent = time.perf_counter()
        flush()
        flushed = time.perf_counter()
        best = min(best, sent - start)
        best_flushed = min(best_flushed, flushed - start)
    return best / sizes.calls * 1e6, best_flushed / sizes.calls * 1e6


def fanout(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    receivers = sizes.fanout_receivers
    delivered = sizes.fanout * receivers
    rows = []
    for title, bus_side in VARIANTS:
        row = Row(f"(d) fan-out 1 -> {receivers}{title}", "events/s", Target(0.7, at_least=True))
        row.notes.append(
            f"{sizes.fanout:,} events x {receivers} receiving processes, all delivered"
        )
        run = functools.partial(Run, count=sizes.fanout, receivers=receivers)
        for side, outcome in bench.each_round("d", _measuring(bench, bus_side, run)):
            row.add(side, delivered / (outcome.last_received - outcome.started))
            _note_drops(row, side, outcome)
        rows.append(row)
    return rows


def _note_drops(row: Row, side: str, outcome: Outcome) -> None:
    dropped = outcome.sender_stats.get("dropped", 0)
    if dropped:
        row.notes.append(f"{side} sender DROPPED {dropped:,}")


def group_delivery(bench: Bench) -> list[Row]:
    """(e): the same burst as (a), to one group receiver against one broadcast receiver."""
    count = bench.sizes.throughput
    row = Row(
        "(e) group delivery 1 -> 1", "events/s", Target(0.5, at_least=True), baseline="broadcast"
    )
    row.notes.append(
        f"{count:,} events, first send to last handled (and acknowledged) in a group of one; "
        "baseline: the same to a broadcast receiver; both keep 500,000 events of history, "
        "since a burst this size outruns a group"
    )

    def one(side: str, prefix: str) -> Outcome:
        bus_side = "signalbus-group" if side == "signalbus" else "signalbus-long-history"
        return measure(Run(bus_side, bench.url, prefix, count=count))

    for side, outcome in bench.each_round("e", one, sides=("broadcast", "signalbus")):
        row.add(side, count / (outcome.last_received - outcome.started))
        _note_drops(row, side, outcome)
    return [row]


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "a": throughput,
    "b": latency,
    "c": send_cost,
    "d": fanout,
    "e": group_delivery,
}


# -- the report -----------------------------------------------------------------------


def machine(server: RedisServer) -> str:
    client = server.client()
    try:
        server_version = client.info("server")["redis_version"]
    finally:
        client.close()
    hiredis = "with hiredis" if redis.utils.HIREDIS_AVAILABLE else "WITHOUT hiredis"
    return (
        f"machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, redis-server "
        f"{server_version}, redis-py {redis.__version__} {hiredis}, signalbus {_source()}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _source() -> str:
    """The commit signalbus was measured at, and whether its files differ from it."""
    package = Path(signalbus.__file__).parent
    git = ["git", "-C", str(package)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"at {commit}{' with uncommitted changes' if changes else ''}"


def table(rows: list[Row]) -> str:
    lines = [("scenario", "unit", "baseline", "", "signalbus", "ratio", "target", "")]
    for row in rows:
        ratio = row.ratio
        verdict = "?" if ratio is None else "ok" if row.target.met(ratio) else "MISSED"
        lines.append(
            (
                row.label,
                row.unit,
                _figure(row.figure(row.baseline)),
                row.baseline,
                _figure(row.figure("signalbus")),
                "-" if ratio is None else f"{ratio:.2f}x",
                str(row.target),
                verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [
        "  ".join(
            cell.rjust(width) if column in (2, 4, 5) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    out.insert(1, "-" * max(len(line) for line in out))
    return "\n".join(out)


def notes(rows: list[Row], rounds: int) -> str:
    lines = []
    for row in rows:
        details = list(row.notes)
        if rounds > 1:
            details += [
                f"{side} rounds {' '.join(_figure(value) for value in values)}"
                for side, values in row.samples.items()
                if len(values) > 1
            ]
        if details:
            lines.append(f"{row.label}: {'; '.join(details)}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    if value is None:
        return "failed"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one round")
    parser.add_argument(
        "--rounds", type=int, help="rounds per multi-process scenario, figures are medians"
    )
    parser.add_argument(
        "--only", default="".join(SCENARIOS), help="the scenarios to run, e.g. ae (default: all)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"no scenario {', '.join(sorted(unknown))}; choose from {''.join(SCENARIOS)}")
    sizes = QUICK if args.quick else Sizes()
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.monotonic()
    with RedisServer(SERVER_ARGS) as server:
        print(machine(server), flush=True)
        bench = Bench(server.url, sizes, rounds)
        rows = [row for name in args.only for row in SCENARIOS[name](bench)]
    print(f"\n{table(rows)}\n\n{notes(rows, rounds)}")
    kind = "quick run" if args.quick else "run"
    how = f"{rounds} rounds, medians shown" if rounds > 1 else "1 round"
    print(f"\n{kind}: {how}, {time.monotonic() - started:.0f}s")
    for error in bench.errors:
        print(f"\nERROR {error}", file=sys.stderr)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
