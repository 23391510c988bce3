"""Probes behind issue 12's figures: dead backends, big operations pages, a wrong URL.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
gateway_hardening`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/gateway_hardening.py dead-backend [--requests 4000]
    .venv/bin/python benchmarks/gateway_hardening.py ops [--ids 100000]
    .venv/bin/python benchmarks/gateway_hardening.py wrong-url
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("gateway_hardening")
