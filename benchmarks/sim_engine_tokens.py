"""CPU per generated token of the simulator's engine loop, prefix caching off vs on.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
sim_engine_tokens`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/sim_engine_tokens.py --runs 3
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("sim_engine_tokens")
