"""Dispatch throughput of the bare FlowController, on one core.

The matrix is the core issue's: in-flight limit L (0 = free flow), concurrent callers
W, priorities P and flows F. Each caller loops: enqueue_and_wait -> release at once,
so the queue holds W - L requests in steady state and every release dispatches the
next one. Flows follow a Zipf(1.1) "hot tenant" distribution, priorities are uniform,
sizes 100 B - 9 KB, as in the upstream Go benchmark.

Usage:
    python benchmarks/dispatch.py                 # whole matrix, ~1 min
    python benchmarks/dispatch.py --quick         # a few cells (CI smoke run)
    python benchmarks/dispatch.py --write /tmp/dispatch.md

Figures are dispatches per second of wall time in one process pinned to one core;
compare cells of one run with each other (ratios), not with another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

import sluicegate as sg
from sluicegate.testbed import percentile

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["QUICK_MATRIX", "Cell", "main", "matrix_table", "run_matrix"]

LIMITS = (0, 1, 100)
CALLERS = (10, 5000, 50000)
PRIORITIES = (1, 8)
FLOWS = (10, 5000)


@dataclass
class Cell:
    limit: int
    callers: int
    priorities: int
    flows: int
    dispatches: int
    seconds: float
    latency_p50_us: float | None
    latency_p99_us: float | None

    @property
    def rate(self) -> float:
        return self.dispatches / self.seconds


def _keys(flows: int, priorities: int, n: int, rng: random.Random) -> list[sg.FlowKey]:
    weights = [1.0 / (rank**1.1) for rank in range(1, flows + 1)]
    ids = rng.choices(range(flows), weights=weights, k=n)
    return [sg.FlowKey(f"tenant-{i}", rng.randrange(priorities)) for i in ids]


async def _run_cell(limit: int, callers: int, priorities: int, flows: int, seconds: float) -> Cell:
    rng = random.Random(42)
    keys = _keys(flows, priorities, 1 << 16, rng)
    sizes = [rng.randrange(100, 9000) for _ in range(1 << 12)]
    config = sg.FlowControlConfig(
        default_ttl=300.0,
        default_band=sg.BandConfig(max_requests=None, max_bytes=None),
    )
    limiter = sg.ConcurrencyLimit(limit) if limit else None
    ctl = sg.FlowController(config, saturation=limiter or sg.NeverSaturated())
    stop = False
    latencies: list[float] = []
    clock = time.perf_counter

    async def caller(index: int) -> None:
        i = index * 7919
        sample = index < 64  # a fixed subset measures enqueue-to-resume latency
        while not stop:
            i += 1
            start = clock()
            ticket = await ctl.enqueue_and_wait(keys[i & 0xFFFF], size=sizes[i & 0xFFF])
            if sample:
                latencies.append(clock() - start)
            ticket.release()
            if i % 16 == 0:
                # A dispatch with nothing queued returns without suspending (like
                # asyncio.Queue.get on a non-empty queue): yield now and then.
                await asyncio.sleep(0)

    async with ctl:
        tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
        await asyncio.sleep(0.2)  # warm-up: every caller has started and queued
        before = ctl.statistics().dispatched
        del latencies[:]
        t0 = clock()
        await asyncio.sleep(seconds)
        elapsed = clock() - t0
        dispatched = ctl.statistics().dispatched - before
        stop = True
        if limiter is not None:
            limiter.set_limit(callers)  # let every waiter through so callers can finish
        await asyncio.gather(*tasks)
    unsaturated = limit == 0 or callers <= limit
    p50 = p99 = None
    if unsaturated and latencies:
        p50, p99 = percentile(latencies, 50) * 1e6, percentile(latencies, 99) * 1e6
    return Cell(limit, callers, priorities, flows, dispatched, elapsed, p50, p99)


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned"  # pragma: no cover - not Linux


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matrix_table(cells: Sequence[Cell]) -> str:
    """The markdown table of a matrix run: rate, cost per dispatch, F=5000 vs F=10, latency."""
    by_key = {(c.limit, c.callers, c.priorities, c.flows): c for c in cells}
    lines = [
        "| L | W | P | F | dispatches/s | cost/dispatch (us) | vs F=10 | resume p50 / p99 (us) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        base = by_key.get((c.limit, c.callers, c.priorities, 10))
        ratio = f"{base.rate / c.rate:.2f}x" if base and c.flows != 10 else "-"
        lat = "-"
        if c.latency_p50_us is not None and c.latency_p99_us is not None:
            lat = f"{c.latency_p50_us:.1f} / {c.latency_p99_us:.1f}"
        limit = "free" if c.limit == 0 else str(c.limit)
        lines.append(
            f"| {limit} | {c.callers} | {c.priorities} | {c.flows} | {c.rate:,.0f} |"
            f" {1e6 / c.rate:.1f} | {ratio} | {lat} |"
        )
    return "\n".join(lines)


def _targets(cells: Sequence[Cell]) -> list[str]:
    free = [c.rate for c in cells if c.limit == 0]
    target_cell = [
        c for c in cells if (c.limit, c.callers, c.priorities, c.flows) == (1, 5000, 8, 5000)
    ]
    ratios = []
    by_key = {(c.limit, c.callers, c.priorities, c.flows): c for c in cells}
    for c in cells:
        base = by_key.get((c.limit, c.callers, c.priorities, 10))
        if base and c.flows != 10:
            ratios.append(base.rate / c.rate)
    out = []
    if free:
        ok = "PASS" if min(free) >= 100_000 else "MISS"
        out.append(f"- free flow >= 100k dispatches/s: min {min(free):,.0f}/s -> {ok}")
    if target_cell:
        rate = target_cell[0].rate
        ok = "PASS" if rate >= 50_000 else "MISS"
        out.append(f"- L=1, W=5000, P=8, F=5000 >= 50k/s: {rate:,.0f}/s -> {ok}")
    if ratios:
        ok = "PASS" if max(ratios) <= 2.0 else "MISS"
        out.append(
            f"- cost per dispatch F=5000 vs F=10 within 2x: worst {max(ratios):.2f}x -> {ok}"
        )
    return out


#: The cells of ``--quick``: one of each kind, small enough for a CI smoke run.
QUICK_MATRIX: Final = ((0, 10, 1, 10), (1, 500, 8, 10), (1, 500, 8, 5000), (100, 500, 1, 10))


def _parser() -> argparse.ArgumentParser:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(prog="dispatch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured time per cell")
    parser.add_argument("--quick", action="store_true", help="a few small cells only")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--write", metavar="MD", help="write the report to this markdown file")
    parser.add_argument("--json", metavar="FILE", help="write raw results as JSON")
    return parser


def _use_uvloop() -> str:
    import importlib.metadata

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {importlib.metadata.version('uvloop')}"


def run_matrix(
    matrix: Sequence[tuple[int, int, int, int]], seconds: float, *, progress: bool = True
) -> list[Cell]:
    """Measure each (L, W, P, F) cell for `seconds` after a 0.2 s warm-up, in this process
    and on the current event loop policy; `progress` prints each rate to stderr."""
    cells = []
    for limit, callers, priorities, flows in matrix:
        cell = asyncio.run(_run_cell(limit, callers, priorities, flows, seconds))
        cells.append(cell)
        if progress:
            print(
                f"L={limit or 'free':>4} W={callers:>5} P={priorities} F={flows:>4}: "
                f"{cell.rate:>9,.0f} dispatches/s",
                file=sys.stderr,
            )
    return cells


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/dispatch.py` (`argv`: its arguments)."""
    args = _parser().parse_args(argv)
    pinned = _pin_one_core()
    if args.quick:
        matrix: Sequence[tuple[int, int, int, int]] = QUICK_MATRIX
        seconds = min(args.seconds, 0.3)
    else:
        matrix = [
            cell
            for cell in itertools.product(LIMITS, CALLERS, PRIORITIES, FLOWS)
            if not (cell[0] and cell[1] <= cell[0])  # W <= L never queues: same as free flow
        ]
        seconds = args.seconds
    loop_name = _use_uvloop() if args.uvloop else "asyncio"
    # The harness imports the whole bench package (the gateway, the simulator, aiohttp):
    # freezing those objects keeps the collector's passes over them out of the figures,
    # which then measure the controller's own allocations, as in a process with the core only.
    gc.freeze()
    cells = run_matrix(matrix, seconds)
    machine = (
        f"{_cpu_model()}, {os.cpu_count()} cores ({pinned}), Python {platform.python_version()},"
        f" {loop_name}"
    )
    report = "\n".join(
        [
            f"Machine: {machine}. {seconds:g} s measured per cell after 0.2 s warm-up.",
            "",
            matrix_table(cells),
            "",
            *_targets(cells),
        ]
    )
    print(report)
    if args.write:
        shown = " ".join(sys.argv[1:] if argv is None else argv)
        with open(args.write, "w") as f:
            f.write("# Dispatch benchmark\n\n")
            f.write(f"Command: `python benchmarks/dispatch.py {shown}`\n\n")
            f.write(__doc__.split("Usage:")[0].split("\n\n", 1)[1].strip() + "\n\n")
            f.write(report + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(c) | {"rate": c.rate} for c in cells], f, indent=2)
