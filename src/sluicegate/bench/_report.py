"""The suite's outputs: JSON results per part and one markdown report.

The report leads with one table of every headline figure (value, same-run baseline,
ratio, target, PASS/MISS), then one section per part with its method and detail tables.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

import orjson

if TYPE_CHECKING:
    from pathlib import Path

    from ._figures import Figure, Machine, PartResult

__all__ = ["Suite", "format_value", "render_report", "write_json"]


@final
@dataclass(slots=True)
class Suite:
    """One invocation of the suite.

    Attributes:
        command: the exact command line.
        machine: where it ran.
        started: when (ISO 8601, local time).
        quick: a smoke run (figures not meaningful).
        parts: what each part measured, in run order.
        load: (when, 1-min load average) samples taken around the parts.
        note: the operator's remark on the conditions (``--note``).
        seconds: total wall time.
    """

    command: str
    machine: Machine
    started: str
    quick: bool
    parts: list[PartResult] = field(default_factory=list)
    load: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``summary.json``."""
        return {
            "command": self.command,
            "machine": dataclasses.asdict(self.machine),
            "machine_line": self.machine.describe(),
            "started": self.started,
            "quick": self.quick,
            "load": self.load,
            "note": self.note,
            "seconds": self.seconds,
            "parts": [p.to_json() for p in self.parts],
        }


def format_value(value: float, unit: str) -> str:
    """A figure for the report: precision by unit, thousands separators, NaN as ``-``."""
    if math.isnan(value):
        return "-"
    if unit in {"req/s", "dispatches/s", "tok/s"}:
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    if unit == "ms":
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if unit == "us":
        return f"{value:.1f}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.4f}"


def _unit(unit: str) -> str:
    return f" {unit}" if unit and unit != "x" else ("x" if unit == "x" else "")


def _row(figure: Figure, part: str | None) -> str:
    value = format_value(figure.value, figure.unit) + _unit(figure.unit)
    baseline = "-"
    if figure.baseline is not None:
        shown = format_value(figure.baseline, figure.unit) + _unit(figure.unit)
        baseline = f"{shown} ({figure.baseline_label})"
    ratio = figure.ratio
    ratio_text = "-" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x"
    target = figure.target.text if figure.target else "-"
    verdict = {"PASS": "**PASS**", "MISS": "**MISS**"}.get(figure.verdict, figure.verdict)
    note = f" ({figure.note})" if figure.note else ""
    lead = f"| {part} " if part is not None else ""
    cells = [f"{figure.name}{note}", value, baseline, ratio_text, target, verdict]
    return lead + "| " + " | ".join(cells) + " |"


def _figures_table(figures: list[Figure], part: str | None = None) -> list[str]:
    lead = "| part " if part is not None else ""
    sep = "|---" if part is not None else ""
    return [
        f"{lead}| figure | value | baseline (same run) | ratio | target | verdict |",
        f"{sep}|---|---|---|---|---|---|",
        *(_row(f, part) for f in figures),
    ]


def _summary(suite: Suite) -> list[str]:
    lines = [
        "| part | figure | value | baseline (same run) | ratio | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in suite.parts:
        lines += [_row(f, part.part) for f in part.figures if f.target is not None]
    verdicts = [f.verdict for p in suite.parts for f in p.figures if f.target is not None]
    lines += [
        "",
        f"{verdicts.count('PASS')} of {len(verdicts)} targets met; "
        f"{verdicts.count('MISS')} missed.",
    ]
    return lines


_HOW = [
    "Run it: `make bench` (all parts, about 15 minutes, writes this file) or "
    "`sluicegate bench [dispatch|overhead|streaming|overload|protection|all] [--quick] "
    "[--target URL --backend-port N [--target-pid PID] [--target-key KEY]] "
    "[--arrivals closed] [--note TEXT]`. JSON results go to "
    "`benchmarks/results/` (one file per part and `summary.json`); a single part or "
    "`--quick` writes its report there too. `--target URL` measures another "
    "OpenAI-compatible gateway in parts 2, 3 and 4, with the same load: configure it to "
    "forward to `127.0.0.1:<backend-port>` (the upstream of parts 2 and 3) and to the "
    "simulators on `<backend-port>` and the next ports (part 4); `--target-pid` adds its CPU "
    "per request and per chunk, `--target-key` the bearer token it needs.",
]


def render_report(suite: Suite) -> str:
    """The markdown report of `suite`."""
    minutes = suite.seconds / 60
    loads = ", ".join(f"{v:.2f} ({when})" for when, v in suite.load)
    lines = [
        "# Benchmarks",
        "",
        "Written by `sluicegate bench` (issue 7). Figures are from one run of the command "
        "below; every figure is set beside a baseline measured in the same run, because "
        "absolute numbers on a shared machine move 20-40 % from run to run: read the ratios.",
        "",
        f"- **Command:** `{suite.command}`"
        + (" (a smoke run: figures not meaningful)" * suite.quick),
        f"- **Machine:** {suite.machine.describe()}",
        f"- **When:** {suite.started}; {minutes:.1f} min wall time",
        f"- **Load average (1 min):** {loads}",
    ]
    if suite.note:
        lines.append(f"- **Conditions:** {suite.note}")
    lines += ["", *_HOW, "", "## Targets", "", *_summary(suite)]
    for part in suite.parts:
        lines += [
            "",
            f"## {part.title}",
            "",
            f"Command: `{part.command}` ({part.seconds:.0f} s). {part.method}",
            "",
            *_figures_table(part.figures),
        ]
        for table in part.tables:
            lines += ["", table]
        if part.notes:
            lines += ["", *(f"- {n}" for n in part.notes)]
    return "\n".join(lines) + "\n"


def write_json(suite: Suite, directory: Path) -> list[Path]:
    """Write ``<part>.json`` per part and ``summary.json``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for part in suite.parts:
        path = directory / f"{part.part}{'-quick' * suite.quick}.json"
        path.write_bytes(orjson.dumps(part.to_json(), option=orjson.OPT_INDENT_2))
        written.append(path)
    path = directory / f"summary{'-quick' * suite.quick}.json"
    path.write_bytes(orjson.dumps(suite.to_json(), option=orjson.OPT_INDENT_2))
    written.append(path)
    return written
