"""Probes of the gateway against hostile clients and broken backends (issue 12).

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
gateway_hostile`` runs it from an installed package); this file keeps its command line.

Usage:
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/gateway_hostile.py all
    .venv/bin/python benchmarks/gateway_hostile.py all
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("gateway_hostile")
