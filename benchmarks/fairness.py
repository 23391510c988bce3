"""Token fairness between tenants under overload: token-fair vs round-robin vs global-strict.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
fairness`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/fairness.py [--duration 42] [--seed 1] [--no-weighted]
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("fairness")
