"""Memory the core keeps after churn, and the cost of one 429's Retry-After figure.

Three measurements, each on the scheduler or controller of whatever `sluicegate` is
imported (run it once with the current tree and once with an old one on PYTHONPATH to
compare):

1. expiries: a saturated pool with 1,000 requests waiting forever in 1,000 flows, while
   200,000 short-lived requests (100 flows, TTL 1 s) arrive and expire;
2. rejections: 100,000 requests with distinct fairness ids, all rejected (the band is
   full);
3. retry-after: the band's queued count behind one 429 at 20,000 queued, read from a
   full `statistics()` snapshot (the old way) and from `queued_requests(priority)`.

Memory is tracemalloc's current traced size after the run minus before it.

Usage:
    python benchmarks/core_memory.py
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import sluicegate as sg
from sluicegate._core._scheduler import Scheduler
from sluicegate.testing import ManualDetector

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["main"]


def _traced(run: Any) -> tuple[float, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = run()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / 1e6, kept


def expiries(n: int = 200_000) -> Scheduler:
    config = sg.FlowControlConfig(
        default_ttl=None, default_band=sg.BandConfig(max_requests=None, max_bytes=None)
    )
    core = Scheduler(config)
    gate = ManualDetector(saturated=True)
    for i in range(1000):
        core.submit(sg.FlowKey(f"waiter-{i}"), 100, None, None, 0.0, gate)
    for i in range(n):
        now = i * 0.001
        core.submit(sg.FlowKey(f"churn-{i % 100}"), 100, 1.0, None, now, gate)
        core.expire(now, gate)
    return core


def rejections(n: int = 100_000) -> Scheduler:
    config = sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=0))
    core = Scheduler(config)
    gate = ManualDetector(saturated=True)
    for i in range(n):
        with contextlib.suppress(sg.QueueFullError):
            core.submit(sg.FlowKey(f"tenant-{i}"), 100, None, None, i * 1e-4, gate)
    return core


async def retry_after_cost(queued: int = 20_000, reps: int = 200) -> tuple[float, float]:
    config = sg.FlowControlConfig(
        default_ttl=None, default_band=sg.BandConfig(max_requests=None, max_bytes=None)
    )
    async with sg.FlowController(config, saturation=sg.ConcurrencyLimit(0)) as ctl:
        tasks = [
            asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey(f"t{i % 500}"), size=100))
            for i in range(queued)
        ]
        await asyncio.sleep(0)
        assert ctl.statistics().queued_requests == queued
        start = time.perf_counter()
        for _ in range(reps):
            band = ctl.statistics().bands.get(0)
            _ = band.queued_requests if band is not None else 0
        snapshot = (time.perf_counter() - start) / reps
        counter = float("nan")
        if hasattr(ctl, "queued_requests"):
            start = time.perf_counter()
            for _ in range(reps * 100):
                ctl.queued_requests(0)
            counter = (time.perf_counter() - start) / (reps * 100)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return snapshot, counter


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/core_memory.py` (`argv`: its arguments)."""
    print(f"sluicegate from {sg.__file__}")
    mb, core = _traced(expiries)
    heap = len(getattr(core.registry.bands[0].fairness, "_heap", []))
    print(
        f"200,000 expiries under saturation, 1,000 waiting: {mb:.2f} MB kept, "
        f"fairness heap {heap:,} entries, timer heap {len(core._timers):,}"
    )
    mb, core = _traced(rejections)
    flows = sum(len(b.flows) for b in core.registry.bands.values())
    print(f"100,000 rejected distinct tenants: {mb:.2f} MB kept, {flows:,} flows")
    snapshot, counter = asyncio.run(retry_after_cost())
    print(
        f"Retry-After at 20,000 queued: statistics() {snapshot * 1e3:.3f} ms,"
        f" queued_requests(0) {counter * 1e6:.3f} us"
    )
