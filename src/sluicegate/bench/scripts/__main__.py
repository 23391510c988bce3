"""``python -m sluicegate.bench.scripts <name> [args]``: a benchmark script, from the package."""

from __future__ import annotations

import sys

from . import SCRIPTS, run_script

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SCRIPTS:
        sys.exit(f"usage: python -m sluicegate.bench.scripts {{{','.join(SCRIPTS)}}} [args]")
    run_script(sys.argv[1], sys.argv[2:])
