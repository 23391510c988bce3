"""Part 4's figures from literal runs, targets and verdicts, and the report."""

from __future__ import annotations

import dataclasses

import pytest

from sluicegate.bench import Figure, Suite, Target, machine, plan_equal_tenants, render_report
from sluicegate.bench._figures import PartResult
from sluicegate.bench._overload import OverloadOptions, Run, RunMode
from sluicegate.bench._quality import quality_figures, run_figures, runs_tables
from sluicegate.bench._report import format_value
from sluicegate.testbed import COMPLETED, UNFINISHED

from .helpers import record

TENANTS = ("t0", "t1")
SLOS = OverloadOptions().slos


def run(mode: RunMode, load: float, ttft: float, *, starve: bool = False) -> Run:
    """Two tenants, one interactive request each, tokens every 10 ms from `ttft`."""
    result = Run(f"{load:g}x, {mode}", load, mode, 1.0, 10.0, started_at=0.0)
    for tenant in TENANTS:
        result.records.append(record(1.0, [1.0 + ttft + 0.01 * i for i in range(5)], tenant=tenant))
    if starve:
        result.records.append(record(2.0, [], outcome=UNFINISHED, end=12.0, tenant="t0"))
    return result


def test_target_verdicts_on_value_and_ratio() -> None:
    """A target bounds the value, or the ratio to the baseline; no target shows '-'."""
    assert Figure("a", 2.0, "ms", target=Target("<=", 3, "")).verdict == "PASS"
    assert Figure("a", 4.0, "ms", target=Target("<=", 3, "")).verdict == "MISS"
    ratio = Target("<=", 1.5, "", on="ratio")
    assert Figure("a", 4.0, "ms", 2.0, target=ratio).verdict == "MISS"
    assert Figure("a", 2.9, "ms", 2.0, target=ratio).verdict == "PASS"
    assert Figure("a", 2.9, "ms", None, target=ratio).verdict == "n/a"
    assert Figure("a", 1.0, "x").verdict == "-"


def test_run_figures_from_literal_records() -> None:
    """Outcomes add up; TTFT ratio, Jain's index and goodput come from the records."""
    figs = run_figures(run("on", 2.0, 0.1, starve=True), TENANTS, SLOS)
    assert figs.sent == 3
    assert figs.outcomes == {COMPLETED: 2, UNFINISHED: 1}
    assert figs.high_ttft_p99 == pytest.approx(0.1 + 9.9 * 0.98, rel=1e-3)
    assert figs.high_ttft_lower_bound
    assert figs.tenant_tokens == {"t0": 5, "t1": 5}
    assert figs.jain == 1.0
    assert figs.good == 2
    assert figs.tokens_per_s == 1.0
    assert figs.tpot is not None
    assert figs.tpot.p50 == pytest.approx(0.01)


def test_quality_figures_compare_with_the_unloaded_run_and_flow_control_off() -> None:
    """TTFT p99 over unloaded, goodput and Jain's index over 'off', work conservation."""
    base = run_figures(run("on", 0.0, 0.05), TENANTS, SLOS)
    cases: list[tuple[float, RunMode, float]] = [
        (1.0, "on", 0.06),
        (1.0, "off", 0.06),
        (2.0, "on", 0.1),
    ]
    figs = [run_figures(run(mode, load, ttft), TENANTS, SLOS) for load, mode, ttft in cases]
    out = {f.name: f for f in quality_figures(figs, {"on": base})}
    ttft = out["interactive TTFT p99, 2x, on"]
    assert ttft.ratio == pytest.approx(2.0)
    assert ttft.verdict == "MISS"
    assert out["interactive TTFT p99, 1x, on"].verdict == "-"
    assert out["Jain's index, equal tenants, 2x, on"].verdict == "PASS"
    work = out["work conservation: output tokens/s, 1x, on"]
    assert (work.ratio, work.verdict) == (1.0, "PASS")
    tables = runs_tables([base, *figs])
    assert len(tables) == 3
    assert "| 2x, on | 2 |" in tables[0]


def test_plan_equal_tenants_gives_each_tenant_the_same_share_of_each_objective() -> None:
    """Round-robin per objective: counts differ by at most one."""
    options = OverloadOptions(tenants=4)
    plan = plan_equal_tenants(options.workload, rate=50, duration=20, seed=3)
    for objective in ("interactive", "standard", "batch"):
        counts = [
            sum(1 for p in plan if p.objective == objective and p.tenant == t.name)
            for t in options.workload.tenants
        ]
        assert max(counts) - min(counts) <= 1


def test_report_states_machine_baselines_and_verdicts() -> None:
    """The markdown has the command, the machine, and a row per target with its verdict."""
    part = PartResult("overhead", "2. Overhead", "sluicegate bench overhead", "Method.")
    part.figures = [
        Figure("added p50", 0.5, "ms", 0.2, "direct", Target("<=", 1, "<= 1 ms")),
        Figure("req/s", 2000.0, "req/s", 8000.0, "direct", Target(">=", 2500, ">= 2,500")),
    ]
    part.tables = ["| a |\n|---|"]
    suite = Suite("sluicegate bench", machine(), "2026-01-01T00:00:00", quick=False)
    suite.parts.append(part)
    suite.load.append(("start", 0.5))
    text = render_report(suite)
    assert "`sluicegate bench`" in text
    assert "Python" in text
    assert "uvloop" in text
    assert (
        "| overhead | added p50 | 0.500 ms | 0.200 ms (direct) | 2.50x | <= 1 ms | **PASS** |"
        in text
    )
    assert "**MISS**" in text
    assert "1 of 2 targets met" in text
    assert dataclasses.asdict(suite.machine)["cores"] >= 1


def test_format_value_by_unit() -> None:
    """Precision follows the unit; NaN shows as '-'."""
    assert format_value(12345.6, "req/s") == "12,346"
    assert format_value(0.1234, "ms") == "0.123"
    assert format_value(18.04, "us") == "18.0"
    assert format_value(float("nan"), "ms") == "-"
    assert format_value(0.99123, "") == "0.9912"
