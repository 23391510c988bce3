"""The end-of-demo summary: figures per run, a terminal table, and a plain-language reading.

The reading is computed from the measured figures, never canned: if flow control made
no difference, or made things worse, the sentences say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from rich.table import Table

from sluicegate.testbed import UNFINISHED

from ._stats import summarize

if TYPE_CHECKING:
    from sluicegate.testbed import Percentile

    from ._run import DemoResult
    from ._stats import RunSummary

__all__ = ["DemoSummary", "reading", "summarize_demo", "summary_rows", "summary_table"]


@final
@dataclass(frozen=True, slots=True)
class DemoSummary:
    """The summaries of the baseline and of each run, in run order."""

    baseline: RunSummary | None
    runs: tuple[RunSummary, ...]

    def run(self, label: str) -> RunSummary | None:
        """The run called `label` (``"flow control on"``...), if it ran."""
        return next((r for r in self.runs if r.label == label), None)


def summarize_demo(demo: DemoResult) -> DemoSummary:
    """Summaries of everything `demo` measured."""
    workload = demo.options.workload
    baseline = None if demo.baseline is None else summarize(demo.baseline, workload)
    return DemoSummary(baseline, tuple(summarize(r, workload) for r in demo.runs))


def _p(value: Percentile | None) -> str:
    return "-" if value is None else value.format_ms()


def summary_rows(demo: DemoResult, summary: DemoSummary) -> tuple[list[str], list[list[str]]]:
    """The summary as (column headers, rows): latency and outcomes per objective, per run."""
    columns = ([summary.baseline] if summary.baseline else []) + list(summary.runs)
    headers = [""] + [r.label + (" (stopped)" if r.interrupted else "") for r in columns]
    rows: list[list[str]] = []
    objectives = demo.options.workload.objectives
    for objective in objectives:
        cells = [f"{objective.name} TTFT p50 / p99"]
        for run in columns:
            fig = run.priority(objective.name)
            ok = fig is not None and fig.sent
            cells.append(f"{_p(fig.ttft_p50)} / {_p(fig.ttft_p99)}" if fig and ok else "-")
        rows.append(cells)
    for objective in objectives:
        cells = [f"{objective.name} completed / sent"]
        for run in columns:
            fig = run.priority(objective.name)
            cells.append(f"{fig.completed} / {fig.sent}" if fig and fig.sent else "-")
        rows.append(cells)
    rows.append(["completed per second", *(f"{r.completed_per_s:.1f}" for r in columns)])
    rows.extend(
        [f"outcome {label}", *(str(r.outcomes.get(label, 0)) for r in columns)]
        for label in sorted({o for r in columns for o in r.outcomes})
    )
    return headers, rows


def summary_table(demo: DemoResult, summary: DemoSummary) -> Table:
    """`summary_rows` as a rich table for the terminal."""
    headers, rows = summary_rows(demo, summary)
    table = Table(title="sluicegate demo: results", header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _ratio(a: Percentile, b: Percentile) -> float:
    return a.value / max(b.value, 1e-9)


def _ttft_sentences(
    name: str, on: RunSummary | None, off: RunSummary | None, base: RunSummary | None
) -> list[str]:
    fig_on = on.priority(name) if on else None
    fig_off = off.priority(name) if off else None
    fig_base = base.priority(name) if base else None
    p_on = fig_on.ttft_p99 if fig_on else None
    p_off = fig_off.ttft_p99 if fig_off else None
    p_base = fig_base.ttft_p99 if fig_base else None
    out = []
    if p_on is not None and p_off is not None:
        ratio = _ratio(p_off, p_on)
        bound = " (at least: some had no token yet when the run ended)" if p_off.lower_bound else ""
        if ratio >= 1.5:
            out.append(
                f"With flow control, 99% of {name} requests got their first token within "
                f"{p_on.format_ms()}; without it, the 99th percentile was "
                f"{p_off.format_ms()}{bound}, {ratio:.0f}x longer."
            )
        elif ratio > 1 / 1.5:
            out.append(
                f"Flow control made no clear difference to {name} TTFT p99 in this run "
                f"({p_on.format_ms()} with, {p_off.format_ms()} without)."
            )
        else:
            out.append(
                f"In this run {name} TTFT p99 was worse with flow control "
                f"({p_on.format_ms()}) than without ({p_off.format_ms()})."
            )
    elif p_on is not None:
        out.append(f"With flow control, {name} TTFT p99 was {p_on.format_ms()}.")
    if p_base is not None and p_on is not None:
        out.append(
            f"Unloaded, the same {name} requests had a TTFT p99 of {p_base.format_ms()}: "
            f"under overload, flow control kept it at {_ratio(p_on, p_base):.1f}x that."
        )
    return out


def _count(outcomes: dict[str, int], prefix: str) -> int:
    return sum(n for o, n in outcomes.items() if o.startswith(prefix))


def _outcome_sentences(on: RunSummary | None, off: RunSummary | None) -> list[str]:
    out = []
    if on is not None:
        rejected, evicted = _count(on.outcomes, "Rejected"), _count(on.outcomes, "Evicted")
        by_objective = ", ".join(
            f"{f.objective} {_count(f.outcomes, 'Rejected') + _count(f.outcomes, 'Evicted')}"
            for f in on.priorities
        )
        out.append(
            f"With flow control the backends completed {on.completed_per_s:.1f} requests/s. "
            f"The gateway refused {rejected} of {on.sent} requests at once (429, queue full) "
            f"and answered {evicted} with 503 after they had waited their TTL, instead of "
            f"piling them up behind the backends (by objective: {by_objective})."
        )
    if off is not None:
        left = off.outcomes.get(UNFINISHED, 0)
        out.append(
            f"Without it, every request was passed on: the backends completed "
            f"{off.completed_per_s:.1f} requests/s and {left} of {off.sent} were still "
            "queued or running inside the backends when the run ended."
        )
    return out


def _tenant_sentences(on: RunSummary | None, off: RunSummary | None) -> list[str]:
    runs = [r for r in (on, off) if r is not None and r.sent]
    if not runs:
        return []
    first = runs[0]
    heavy = max(first.tenants, key=lambda t: t.sent)
    sent_share = heavy.sent / max(first.sent, 1)
    shares = []
    for run in runs:
        tokens = sum(t.tokens for t in run.tenants)
        mine = next(t for t in run.tenants if t.tenant == heavy.tenant)
        shares.append(f"{mine.tokens / max(tokens, 1):.0%} with {run.label}")
    return [
        f"The heavy tenant {heavy.tenant} sent {sent_share:.0%} of the requests; its share "
        f"of the completed output tokens was {' and '.join(shares)} (within a priority, "
        "the gateway takes tenants in turn)."
    ]


def reading(summary: DemoSummary, top_objective: str, second_objective: str | None) -> list[str]:
    """A few sentences on what this demo measured, for the terminal and the report."""
    on = summary.run("flow control on")
    off = summary.run("flow control off")
    out = _ttft_sentences(top_objective, on, off, summary.baseline)
    if second_objective is not None:
        out += _ttft_sentences(second_objective, on, off, None)
    out += _outcome_sentences(on, off)
    out += _tenant_sentences(on, off)
    if not summary.runs:
        out.append("The demo was stopped before the first run: only the baseline ran.")
    elif any(r.interrupted for r in summary.runs):
        out.append("The demo was stopped early: these figures cover only what ran.")
    return out
