"""Can one simulator process on one core keep N streams at 20 tokens/s on schedule?

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
sim_streams`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/sim_streams.py --streams 250,500,1000 --tokens 200
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("sim_streams")
