"""Added p99 latency in an open loop at several rates: direct, through the gateway, and
through another gateway.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
open_loop_sweep`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/open_loop_sweep.py [--fractions 0.2,0.4,0.6,0.8]
        [--rates 1000,2500] [--rounds 3] [--seconds 3]
        [--target URL --target-pid PID --backend-port N] [--upstream aiohttp|raw]
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("open_loop_sweep")
