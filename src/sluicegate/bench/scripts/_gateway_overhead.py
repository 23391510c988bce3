"""What the gateway adds on the data path, against a minimal fast upstream on loopback.

Three processes: a raw asyncio-protocol upstream (pinned to the load core), the gateway
(`sluicegate serve`, pinned alone to the gateway core, flow control on with a
concurrency limit far above the load) and this load generator (load core). Direct and
through-gateway runs are interleaved, repeated, and reported as differences and ratios
measured in the same run; absolute figures on a shared 2-core machine are noisy.

    .venv/bin/python benchmarks/gateway_overhead.py [--rounds 3] [--gateway-core 0 --load-core 1]

Reports: added latency p50/p99 at concurrency 1 (gateway minus direct), non-streamed
req/s at concurrency 64 (both), and the gateway's CPU time per relayed SSE event (from
/proc/<pid>, so only the gateway process is counted). The measurement lives in
`sluicegate.bench` (parts 2 and 3 of `sluicegate bench`); this script keeps its own CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import TYPE_CHECKING

from sluicegate.bench._overhead import (
    Endpoints,
    OverheadOptions,
    measure_overhead,
    measure_streaming,
    running,
)
from sluicegate.bench._upstream import run_upstream

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["main"]


async def measure(ep: Endpoints, options: OverheadOptions) -> dict[str, list[float]]:
    results = await measure_overhead(ep, options)
    results.update(await measure_streaming(ep, options))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/gateway_overhead.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(
        prog="gateway_overhead.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--events", type=int, default=200, help="SSE events per stream")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="ms between SSE events")
    parser.add_argument("--streams", type=int, default=64, help="concurrent SSE streams")
    parser.add_argument("--upstream", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upstream:  # the old way to start the upstream alone
        run_upstream(args.upstream, args.events, args.gap_ms / 1000)
        return
    options = OverheadOptions(
        rounds=args.rounds,
        streams=(args.streams,),
        events=args.events,
        gap_ms=args.gap_ms,
        gateway_core=args.gateway_core,
        load_core=args.load_core,
    )
    with running(options) as endpoints:
        results = asyncio.run(measure(endpoints, options))
    print(f"{'metric':34} {'median':>10}   rounds")
    for name, values in results.items():
        shown = " ".join(f"{v:.3f}" if v < 100 else f"{v:.0f}" for v in values)
        print(f"{name:34} {statistics.median(values):10.3f}   {shown}")
