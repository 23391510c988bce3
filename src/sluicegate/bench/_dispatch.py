"""Part 1: dispatch throughput of the bare controller over the W x L x P x F matrix.

The measurement itself is the core issue's benchmark (`benchmarks/dispatch.py`, whose code
is `sluicegate.bench.scripts`), run in a fresh process (``python -m
sluicegate.bench.scripts dispatch``) that pins itself to one core, on uvloop as the gateway
runs; this module runs it, reads its JSON, and turns the cells into the report's figures
and table. Nothing is looked up on disk, so part 1 runs from an installed package.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson

from ._figures import Figure, PartResult, Target
from .scripts._dispatch import Cell, matrix_table

__all__ = ["DispatchError", "run_dispatch"]

#: The configuration the issue sets a target for.
TARGET_CELL: Final = (1, 5000, 8, 5000)


class DispatchError(RuntimeError):
    """The dispatch benchmark could not run; the message says why."""


def _key(cell: dict[str, Any]) -> tuple[int, int, int, int]:
    return (cell["limit"], cell["callers"], cell["priorities"], cell["flows"])


def dispatch_figures(cells: list[dict[str, Any]]) -> list[Figure]:
    """The headline figures of a matrix run (cells as the script's JSON has them)."""
    by_key = {_key(c): c for c in cells}
    figures: list[Figure] = []
    free = [c for c in cells if c["limit"] == 0]
    if free:
        worst = min(free, key=lambda c: c["rate"])
        best = max(free, key=lambda c: c["rate"])
        figures.append(
            Figure(
                "free flow, slowest cell (W={callers} P={priorities} F={flows})".format(**worst),
                worst["rate"],
                "dispatches/s",
                best["rate"],
                "fastest free-flow cell (W={callers} P={priorities} F={flows})".format(**best),
                Target(">=", 100_000, ">= 100k/s"),
            )
        )
    if (cell := by_key.get(TARGET_CELL)) is not None:
        free_twin = by_key.get((0, *TARGET_CELL[1:]))
        figures.append(
            Figure(
                "L=1, W=5000, P=8, F=5000",
                cell["rate"],
                "dispatches/s",
                free_twin["rate"] if free_twin else None,
                "free flow, same W, P, F",
                Target(">=", 50_000, ">= 50k/s"),
            )
        )
    ratios = [
        (base["rate"] / c["rate"], c)
        for c in cells
        if c["flows"] != 10 and (base := by_key.get((*_key(c)[:3], 10))) is not None
    ]
    if ratios:
        ratio, cell = max(ratios, key=lambda rc: rc[0])
        figures.append(
            Figure(
                "cost per dispatch, F=5000 / F=10, worst (L={limit} W={callers} "
                "P={priorities})".format(**cell),
                ratio,
                "x",
                note="vs the same L, W, P with 10 flows; the core issue asks O(active flows)",
                target=Target("<=", 2.0, "<= 2x (core issue)"),
            )
        )
    return figures


def run_dispatch(*, quick: bool, seconds: float | None = None, uvloop: bool = True) -> PartResult:
    """Run the dispatch matrix in a fresh, pinned process and collect its figures.

    Args:
        quick: a few small cells only (the script's ``--quick``).
        seconds: measured seconds per cell (the script's default when None).
        uvloop: run the controller on uvloop, as the gateway does.

    Raises:
        DispatchError: the measuring process failed.
    """
    args = [sys.executable, "-m", "sluicegate.bench.scripts", "dispatch"]
    args += ["--quick"] * quick + ["--uvloop"] * uvloop
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    shown = "python " + " ".join(args[1:])
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dispatch.json"
        proc = subprocess.run(
            [*args, "--json", str(out)], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise DispatchError(f"{shown} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        cells: list[dict[str, Any]] = orjson.loads(out.read_bytes())
    table = matrix_table([Cell(**{k: v for k, v in c.items() if k != "rate"}) for c in cells])
    machine_line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("Machine:")), "")
    return PartResult(
        part="dispatch",
        title="1. Dispatch throughput of the bare controller",
        command=shown,
        method=(
            "The core issue's matrix: in-flight limit L (free = no limit), concurrent callers "
            "W, priorities P, flows F (Zipf 1.1). Each caller loops enqueue_and_wait -> "
            "release; dispatches/s of wall time in one process pinned to one core. "
            "Enqueue-to-resume latency is sampled by 64 callers in unsaturated cells. "
            + machine_line.removeprefix("Machine: ")
        ),
        figures=dispatch_figures(cells),
        tables=[table],
        seconds=time.monotonic() - began,
        raw={"cells": cells, "stdout": proc.stdout},
    )
