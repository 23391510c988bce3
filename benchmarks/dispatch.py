"""Dispatch throughput of the bare FlowController, on one core.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
dispatch`` runs it from an installed package); this file keeps its command line.

Usage:
    python benchmarks/dispatch.py                 # whole matrix, ~1 min
    python benchmarks/dispatch.py --quick         # a few cells (CI smoke run)
    python benchmarks/dispatch.py --write /tmp/dispatch.md
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("dispatch")
