"""The self-contained HTML report: inline SVG charts, inline CSS, no script, no network.

Each chart is drawn once per run, side by side, on the same scales, so the two columns
compare at a glance. The figures behind the page are embedded as JSON
(``<script type="application/json" id="sluicegate-demo-data">``, data only, never run) for
tests and for anyone who wants the numbers.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testbed import censored_percentile, ttft_samples

from ._stats import ttft_over_time
from ._summary import reading, summary_rows
from ._svg import Bar, Series, bar_chart, line_chart, nice_max

if TYPE_CHECKING:
    from pathlib import Path

    from ._run import DemoResult
    from ._stats import RunResult, RunSummary
    from ._summary import DemoSummary

__all__ = ["render_report", "write_report"]

_COLORS = ("#d62728", "#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd")
_ENGINE_COLOR = "#ff7f0e"
_OUTCOME_COLORS = {"Completed": "#2ca02c", "Unfinished": "#ff7f0e", "Failed": "#8c564b"}
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}h3{font-size:14px;margin:14px 0 4px}
.cols{display:flex;gap:16px;flex-wrap:wrap}.col{flex:1 1 460px;min-width:0}
.col svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:4px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}
.reading{background:#f4f8fb;border-left:4px solid #1f77b4;padding:8px 14px}
.small{color:#666;font-size:12px}
"""


def _color(index: int) -> str:
    return _COLORS[index % len(_COLORS)]


def _x_max(seconds: float) -> float:
    """The x axis end: `seconds` rounded up to a multiple of 4 or 20, so ticks are round."""
    step = 20.0 if seconds > 40 else 4.0
    return math.ceil(max(seconds, 1.0) / step) * step


def _ttft_chart(
    run: RunResult, demo: DemoResult, bucket_s: float, log_y: tuple[float, float]
) -> str:
    series = []
    for i, objective in enumerate(demo.options.workload.objectives):
        mine = [r for r in run.records if r.planned.objective == objective.name]
        points = ttft_over_time(mine, run.started_at, bucket_s)
        series.append(
            Series(
                f"{objective.name} p99",
                _color(i),
                [(t, p99.value) for t, _, p99 in points],
                lower_bounds=[p99.lower_bound for _, _, p99 in points],
            )
        )
        series.append(
            Series(
                f"{objective.name} p50",
                _color(i),
                [(t, p50.value) for t, p50, _ in points],
                dashed=True,
                lower_bounds=[p50.lower_bound for _, p50, _ in points],
            )
        )
    if demo.baseline is not None:
        top = demo.options.workload.objectives[0].name
        found = censored_percentile(ttft_samples(r for r in demo.baseline.records), 99)
        if found is not None:
            flat = [(0.0, found.value), (run.duration, found.value)]
            series.append(Series(f"{top} p99 unloaded", "#000000", flat, dotted=True))
    return line_chart(
        f"TTFT per objective over time, {run.label}",
        series,
        x_max=_x_max(run.duration),
        y_max=0,
        x_label="seconds (by when the request was sent)",
        y_label="time to first token",
        log_y=log_y,
    )


def _queue_chart(run: RunResult, demo: DemoResult, y_max: float) -> str:
    series = []
    for i, objective in enumerate(demo.options.workload.objectives):
        points = [(s.t, float(s.queued.get(objective.priority, 0))) for s in run.samples]
        series.append(
            Series(f"{objective.name} (priority {objective.priority})", _color(i), points)
        )
    engine = [(s.t, float(s.engine_waiting)) for s in run.samples]
    series.append(Series("waiting inside the engines", _ENGINE_COLOR, engine, dashed=True))
    return line_chart(
        f"Queue depth over time, {run.label}",
        series,
        x_max=_x_max(max(run.elapsed, run.duration)),
        y_max=y_max,
        x_label="seconds",
        y_label="requests waiting",
    )


def _tenant_chart(summary: RunSummary, x_max: float) -> str:
    total = max(sum(t.tokens for t in summary.tenants), 1)
    bars = [
        Bar(
            t.tenant,
            t.tokens_per_s,
            _color(1),
            f"{t.tokens_per_s:.0f} tok/s ({t.tokens / total:.0%}); {t.completed}/{t.sent} req",
        )
        for t in summary.tenants
    ]
    return bar_chart(
        f"Completed output tokens per second by tenant, {summary.label}", bars, x_max=x_max
    )


def _outcome_chart(summary: RunSummary, labels: list[str], x_max: float) -> str:
    bars = [
        Bar(
            label,
            summary.outcomes.get(label, 0),
            _OUTCOME_COLORS.get(label, "#d62728"),
            str(summary.outcomes.get(label, 0)),
        )
        for label in labels
    ]
    return bar_chart(f"Outcomes, {summary.label}", bars, x_max=x_max)


def _ttft_range(demo: DemoResult) -> tuple[float, float]:
    values = [t for run in demo.runs for r in run.records if (t := r.ttft) is not None] + [
        r.finished_at - r.sent_at for run in demo.runs for r in run.records if r.finished_at
    ]
    if not values:
        return (0.01, 1.0)
    low = max(min(values), 0.001)
    return (10.0 ** math.floor(math.log10(low)), nice_max(max(values)))


def _table_html(demo: DemoResult, summary: DemoSummary) -> str:
    headers, rows = summary_rows(demo, summary)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data(demo: DemoResult, summary: DemoSummary) -> dict[str, Any]:
    def run_doc(run: RunResult, s: RunSummary) -> dict[str, Any]:
        return {
            "label": run.label,
            "mode": run.mode,
            "planned": run.planned,
            "sent": len(run.records),
            "elapsed_s": run.elapsed,
            "interrupted": run.interrupted,
            "outcomes": s.outcomes,
            "request_outcomes": [r.outcome for r in run.records],
            "ttft_p99_s": {
                p.objective: None if p.ttft_p99 is None else p.ttft_p99.value for p in s.priorities
            },
            "completed_per_s": s.completed_per_s,
        }

    runs = [run_doc(r, s) for r, s in zip(demo.runs, summary.runs, strict=True)]
    if demo.baseline is not None and summary.baseline is not None:
        runs.insert(0, run_doc(demo.baseline, summary.baseline))
    o = demo.options
    return {
        "options": {
            "duration": o.duration,
            "backends": o.backends,
            "load": o.load,
            "seed": o.seed,
            "compare": o.compare,
            "rate": o.rate,
            "capacity": o.capacity,
        },
        "interrupted": demo.interrupted,
        "runs": runs,
    }


def _heading(demo: DemoResult) -> str:
    if not demo.runs:
        return "stopped before the first run"
    return " and ".join(r.label for r in demo.runs)


def _chart_sections(demo: DemoResult, summary: DemoSummary) -> str:
    """The four chart rows, one column per run, each chart on a scale shared by the runs."""
    bucket_s = max(demo.options.duration / 20, 1.0)
    log_y = _ttft_range(demo)
    depths = (max([*s.queued.values(), s.engine_waiting]) for r in demo.runs for s in r.samples)
    queue_max = nice_max(max(depths, default=1))
    tenant_max = nice_max(max((t.tokens_per_s for s in summary.runs for t in s.tenants), default=1))
    labels = sorted({k for s in summary.runs for k in s.outcomes})
    outcome_max = nice_max(max((v for s in summary.runs for v in s.outcomes.values()), default=1))
    sections = [
        (
            "Time to first token (p99 solid, p50 dashed; log scale)",
            [_ttft_chart(r, demo, bucket_s, log_y) for r in demo.runs],
        ),
        (
            "Queue depth: at the gateway per band, and inside the engines",
            [_queue_chart(r, demo, queue_max) for r in demo.runs],
        ),
        ("Throughput per tenant", [_tenant_chart(s, tenant_max) for s in summary.runs]),
        ("Outcomes", [_outcome_chart(s, labels, outcome_max) for s in summary.runs]),
    ]
    body = []
    for title, charts in sections:
        cols = "".join(
            f'<div class="col"><h3>{escape(r.label)}</h3>{c}</div>'
            for r, c in zip(demo.runs, charts, strict=True)
        )
        body.append(f'<h2>{escape(title)}</h2><div class="cols">{cols}</div>')
    return "\n".join(body)


def render_report(demo: DemoResult, summary: DemoSummary) -> str:
    """The report as one HTML document."""
    o = demo.options
    objectives = o.workload.objectives
    text = reading(summary, objectives[0].name, objectives[1].name if len(objectives) > 1 else None)
    tenants = ", ".join(f"{t.name} (weight {t.weight:g})" for t in o.workload.tenants)
    mix = ", ".join(
        f"{x.name}: priority {x.priority}, {x.share:.0%} of requests, "
        f"{x.max_tokens[0]}-{x.max_tokens[1]} output tokens"
        for x in objectives
    )
    data = orjson.dumps(_data(demo, summary)).decode().replace("</", "<\\/")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sluicegate demo report</title><style>{_CSS}</style></head>
<body>
<h1>sluicegate demo: {escape(_heading(demo))}</h1>
<p class="small">{escape(stamp)}. {o.backends} simulated backends ({o.sim.max_num_seqs} sequences,
{o.sim.kv_cache_size}-token KV cache each); {o.rate:.1f} requests/s offered for {o.duration:g} s,
{o.load:g}x the estimated capacity of {o.capacity:.1f}/s; seed {o.seed}.
Objectives: {escape(mix)}. Tenants: {escape(tenants)}.</p>
<h2>What this run shows</h2>
<div class="reading">{"".join(f"<p>{escape(s)}</p>" for s in text)}</div>
<h2>Summary</h2>
{_table_html(demo, summary)}
<p class="small">TTFT counts requests that never got a token with their wait until the run
ended, as a lower bound (shown as "&gt;=" in tables and as &#9650; on chart points).
Refused requests have no TTFT.</p>
{_chart_sections(demo, summary)}
<script type="application/json" id="sluicegate-demo-data">{data}</script>
</body></html>
"""


def write_report(path: Path, demo: DemoResult, summary: DemoSummary) -> Path:
    """Write the report to `path` (parents created); returns the absolute path.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(demo, summary), encoding="utf-8")
    return path.resolve()
