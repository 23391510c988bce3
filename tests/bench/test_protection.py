"""Part 5 (protection by default): its plans, and a tiny run of every mode."""

from __future__ import annotations

import pytest

from sluicegate.bench._protection import (
    ALL_PROTECTION_MODES,
    BURST_PERIOD_S,
    PROTECTION_MODES,
    ProtectionOptions,
    bursty_plan,
    poisson_plan,
    protection_config,
    protection_figures,
    run_protection_runs,
)
from sluicegate.bench._quality import run_figures


def test_bursty_plan_sends_interactive_only_in_on_periods_at_the_same_mean() -> None:
    workload = ProtectionOptions().workload
    steady = poisson_plan(workload, rate=20.0, duration=80.0, seed=1)
    bursty = bursty_plan(workload, rate=20.0, duration=80.0, seed=1)
    high = [p for p in bursty if p.objective == "interactive"]
    assert all(int(p.at // BURST_PERIOD_S) % 2 == 0 for p in high)
    steady_high = sum(1 for p in steady if p.objective == "interactive")
    assert 0.8 * steady_high <= len(high) <= 1.2 * steady_high
    # Indexes follow time; tenants take turns within each objective.
    assert [p.index for p in bursty] == list(range(len(bursty)))
    assert [p.at for p in bursty] == sorted(p.at for p in bursty)
    tenants = [p.tenant for p in high]
    assert tenants[:4] == ["tenant-0", "tenant-1", "tenant-2", "tenant-3"]


def test_the_modes_differ_only_in_the_saturation_section_and_pausing() -> None:
    workload = ProtectionOptions().workload
    urls = ["http://127.0.0.1:1"]
    configs = {m: protection_config(m, urls, workload) for m in ALL_PROTECTION_MODES}
    assert {m: c.pools[0].saturation.type for m, c in configs.items()} == {
        "off": "concurrency",
        "adaptive": "adaptive",
        "no-pause": "adaptive",
        "utilization": "utilization",
        "evict": "adaptive",
    }
    assert {m: c.pools[0].preemption for m, c in configs.items()} == {
        "off": "resume",  # nothing ever waits: nothing is paused
        "adaptive": "resume",
        "no-pause": "off",
        "utilization": "resume",
        "evict": "resume",
    }
    # Eviction is opt-in: only its own mode turns it on.
    assert [m for m, c in configs.items() if c.pools[0].evict_streams] == ["evict"]
    assert "evict" not in PROTECTION_MODES
    flow_control = [c.flow_control for c in configs.values()]
    assert all(each == flow_control[0] for each in flow_control)


@pytest.mark.asyncio
async def test_a_tiny_run_of_every_mode_accounts_for_every_request() -> None:
    options = ProtectionOptions(
        duration=1.0, grace_s=0.5, baseline_s=0.5, loads=(1.0,), backends=1, tenants=2
    )
    base, runs = await run_protection_runs(options)
    assert [r.mode for r in runs] == ["off", "adaptive", "no-pause", "utilization"] * 2
    tenants = [t.name for t in options.workload.tenants]
    for r in (base, *runs):
        assert r.run.records
        assert all(rec.outcome is not None for rec in r.run.records)
        r.figures = run_figures(r.run, tenants, options.slos)
    figures = protection_figures(base, runs)
    verdicts = {f.name.split(",")[0] for f in figures if f.verdict in ("PASS", "MISS")}
    assert verdicts == {
        "interactive TTFT p99",
        "output tokens/s",
        "wasted tokens",
        "Jain's index",
    }
