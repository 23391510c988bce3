"""Memory the core keeps after churn, and the cost of one 429's Retry-After figure.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
core_memory`` runs it from an installed package); this file keeps its command line.

Usage:
    python benchmarks/core_memory.py
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("core_memory")
