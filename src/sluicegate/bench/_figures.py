"""Figures, targets and the machine: what every part of the suite hands to the report.

Every headline figure carries the baseline measured in the same run and the ratio to it
(absolute numbers on a shared machine are noisy; ratios measured side by side are not),
and, when the issue sets one, a target with its verdict.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal, final

__all__ = ["Figure", "Machine", "PartResult", "Target", "load_average", "machine"]


@final
@dataclass(frozen=True, slots=True)
class Target:
    """A bound from the issue: ``value <op> bound`` passes, where `on` says whether the
    figure's value or its ratio to the baseline is bounded."""

    op: Literal["<=", ">="]
    bound: float
    text: str
    on: Literal["value", "ratio"] = "value"

    def passes(self, value: float) -> bool:
        """Whether `value` (the figure's value or ratio, per `on`) meets the target."""
        return value <= self.bound if self.op == "<=" else value >= self.bound


@final
@dataclass(frozen=True, slots=True)
class Figure:
    """One headline figure.

    Attributes:
        name: what it is, e.g. ``"added latency p50, concurrency 1"``.
        value: the measurement.
        unit: its unit (``"ms"``, ``"req/s"``, ``"us"``, ``"x"``...).
        baseline: the same-run reference it is compared with, if any.
        baseline_label: what the baseline is.
        target: the issue's target, if any.
        note: a short remark (a lower bound, a condition).
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """`value / baseline`, when there is a non-zero baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        """``PASS``, ``MISS``, or ``-`` without a target."""
        if self.target is None:
            return "-"
        checked = self.ratio if self.target.on == "ratio" else self.value
        if checked is None:
            return "n/a"
        return "PASS" if self.target.passes(checked) else "MISS"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON results."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
            "ratio": self.ratio,
            "target": self.target.text if self.target else None,
            "verdict": self.verdict,
            "note": self.note,
        }


@final
@dataclass(slots=True)
class PartResult:
    """What one part of the suite measured.

    Attributes:
        part: ``dispatch``, ``overhead``, ``streaming`` or ``overload``.
        title: the report's heading.
        command: how to run this part alone.
        method: a few sentences on what was measured, and how.
        figures: the headline figures.
        tables: markdown tables with the detail.
        notes: remarks for the reader.
        seconds: wall time the part took.
        raw: everything measured, for the JSON results.
    """

    part: str
    title: str
    command: str
    method: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON results."""
        return {
            "part": self.part,
            "title": self.title,
            "command": self.command,
            "seconds": self.seconds,
            "figures": [f.to_json() for f in self.figures],
            "notes": self.notes,
            "raw": self.raw,
        }


@final
@dataclass(frozen=True, slots=True)
class Machine:
    """Where the suite ran."""

    cpu: str
    cores: int
    usable_cores: int
    python: str
    uvloop: str
    aiohttp: str
    platform: str
    commit: str

    def describe(self) -> str:
        """One line for the report."""
        return (
            f"{self.cpu}; {self.cores} cores ({self.usable_cores} usable); "
            f"Python {self.python}; uvloop {self.uvloop}; aiohttp {self.aiohttp}; "
            f"{self.platform}; commit {self.commit}"
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> Machine:
    """Describe this machine and interpreter."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=usable or (os.cpu_count() or 0),
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        uvloop=_version("uvloop"),
        aiohttp=_version("aiohttp"),
        platform=platform.platform(terse=True),
        commit=_commit(),
    )


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, where the OS has them."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on this platform
        return None
