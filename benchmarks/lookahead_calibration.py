"""Early rejection's calibration over several seeds: the false-reject share, pooled.

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
lookahead_calibration`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/lookahead_calibration.py [--seeds 0,1,2,3,4] [--duration 30]
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("lookahead_calibration")
