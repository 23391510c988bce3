"""Early rejection's calibration over several seeds: the false-reject share, pooled.

Part 6 of `sluicegate bench` (``bench lookahead``) measures the false rejects of one
seeded plan: a few dozen would-be early rejects, so one request moves the share by two
or three points. This script runs only part 6's shadow run (open loop, early rejection
off, every answer carrying the wait predicted at admission and the actual one) for each
seed, on the same stack and mix, and pools them:

* per seed and pooled: the would-be early rejects (predicted wait > SLO x (1 + margin)),
  the false ones among them (they started within their SLO), the share (target <= 5 %),
  and the median / p90 absolute error of the prediction;
* each false reject: its objective, SLO, predicted and actual wait, so a miss can be
  read.

    .venv/bin/python benchmarks/lookahead_calibration.py [--seeds 0,1,2,3,4]
        [--duration 30] [--load 2]

About 40 s per seed (30 s of arrivals, start-up, the grace for the last answers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING

from sluicegate.testbed import percentile

from .._lookahead import (
    LookaheadOptions,
    LookaheadRun,
    calibration,
    false_rejects,
    shadow_run,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _misses(run: LookaheadRun) -> list[str]:
    """One line per false reject: objective, SLO, predicted and actual wait."""
    return [
        f"    {sent.planned.objective:<12} slo {sent.slo_ms:7.0f} ms  "
        f"predicted {eta_ms:7.0f} ms  actual {queue_ms:7.0f} ms"
        for sent, eta_ms, queue_ms in false_rejects(run)
    ]


def _row(label: str, cal: dict[str, float]) -> str:
    share = cal["false_reject_share"] * 100.0
    return (
        f"{label:<8} {cal['false_rejects']:>5.0f} of {cal['would_reject']:<5.0f} "
        f"{share:6.1f} %   abs. error p50 {cal['abs_error_p50_ms']:6.0f} ms  "
        f"p90 {cal['abs_error_p90_ms']:6.0f} ms  (median wait {cal['actual_wait_p50_ms']:.0f} ms)"
    )


def _pooled(runs: Sequence[LookaheadRun]) -> dict[str, float]:
    """The calibration of all runs' requests together."""
    merged = LookaheadRun("pooled", False, retrying=False)
    for run in runs:
        merged.sent.extend(run.sent)
    return calibration(merged)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--load", type=float, default=2.0, help="x the estimated capacity")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    print("seed     false rejects        share   prediction error", flush=True)
    runs = []
    for seed in seeds:
        options = LookaheadOptions(
            seed=seed, duration=args.duration, load=args.load, closed_loop=False
        )
        run = asyncio.run(shadow_run(options))
        runs.append(run)
        print(_row(str(seed), calibration(run)), flush=True)
        for line in _misses(run):
            print(line, flush=True)
    pooled = _pooled(runs)
    print(_row("pooled", pooled))
    waits = [
        s.first.queue_ms for r in runs for s in r.sent if s.first and s.first.queue_ms is not None
    ]
    print(
        f"requests sent {sum(len(r.sent) for r in runs)}; queue wait p90 "
        f"{percentile(waits, 90) if waits else 0.0:.0f} ms; "
        f"load average at end: {os.getloadavg()[0]:.2f}"
    )
