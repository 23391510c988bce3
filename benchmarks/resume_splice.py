"""CPU cost of the pause-and-resume splicer per SSE event (single process, no I/O).

The measurement is `sluicegate.bench.scripts` (``python -m sluicegate.bench.scripts
resume_splice`` runs it from an installed package); this file keeps its command line.

Usage:
    .venv/bin/python benchmarks/resume_splice.py --events 200000
"""

from sluicegate.bench.scripts import run_script

if __name__ == "__main__":
    run_script("resume_splice")
