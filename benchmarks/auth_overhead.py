"""What authentication and per-tenant limits add per request (issue 14: <= 10 us).

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
auth_overhead`` runs it from an installed package); this file keeps its command line.

Usage:
    python benchmarks/auth_overhead.py [--rounds 7] [--n 20000]
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("auth_overhead")
