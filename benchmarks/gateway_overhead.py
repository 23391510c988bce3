"""What the gateway adds on the data path, against a minimal fast upstream on loopback.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
gateway_overhead`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/gateway_overhead.py [--rounds 3] [--gateway-core 0 --load-core 1]
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("gateway_overhead")
