"""Part 4's figures: from the runs' request records to ratios, goodput, fairness, work.

Pure: everything is computed from `Run`s (records with loop times), so it is tested
with literal records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from sluicegate.testbed import (
    COMPLETED,
    UNFINISHED,
    censored_percentile,
    jain_index,
    percentile,
    ttft_samples,
)

from ._figures import Figure, Target
from ._stats import Distribution, distribution, goodput, tokens_until, tpot

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._overload import Run, RunMode
    from ._stats import Slo

__all__ = ["HIGH", "RunFigures", "quality_figures", "run_figures", "runs_tables"]

#: The objective whose latency flow control protects.
HIGH = "interactive"


@final
@dataclass(frozen=True, slots=True)
class RunFigures:
    """What one run measured.

    Attributes:
        label, load, mode, duration: as in the `Run`.
        sent: requests sent.
        outcomes: requests by outcome (they add up to `sent`).
        high_ttft_p50, high_ttft_p99: interactive TTFT (s), censored samples included.
        high_ttft_lower_bound: the p99 is a lower bound (starved requests moved it).
        high_itl_p99: interactive inter-token gaps, p99 (s).
        ttft, tpot, itl, e2e: vLLM-style distributions over completed requests.
        good: requests meeting their objective's SLO.
        tokens_per_s: output tokens streamed during the arrival window, per second.
        tenant_tokens: the same per tenant (tokens).
        jain: Jain's index of `tenant_tokens`.
    """

    label: str
    load: float
    mode: RunMode
    duration: float
    sent: int
    outcomes: dict[str, int]
    high_ttft_p50: float | None
    high_ttft_p99: float | None
    high_ttft_lower_bound: bool
    high_itl_p99: float | None
    ttft: Distribution | None
    tpot: Distribution | None
    itl: Distribution | None
    e2e: Distribution | None
    good: int
    tokens_per_s: float
    tenant_tokens: dict[str, int]
    jain: float | None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON results."""
        return {name: _plain(getattr(self, name)) for name in self.__slots__}


def _plain(value: object) -> object:
    if isinstance(value, Distribution):
        return {"count": value.count, "mean": value.mean, "p50": value.p50, "p99": value.p99}
    return value


def run_figures(run: Run, tenants: Sequence[str], slos: dict[str, Slo]) -> RunFigures:
    """The figures of one run; `tenants` are the equal tenants Jain's index compares,
    `slos` the goodput objectives."""
    records = run.records
    done = [r for r in records if r.outcome == COMPLETED]
    high = [r for r in records if r.planned.objective == HIGH]
    high_ttft = ttft_samples(high)
    p50 = censored_percentile(high_ttft, 50)
    p99 = censored_percentile(high_ttft, 99)
    high_gaps = [g for r in high for g in r.meter.gaps]
    window_end = run.started_at + run.duration
    per_tenant = dict.fromkeys(tenants, 0)
    for r in records:
        if r.planned.tenant in per_tenant:
            per_tenant[r.planned.tenant] += tokens_until(r, window_end)
    return RunFigures(
        label=run.label,
        load=run.load,
        mode=run.mode,
        duration=run.duration,
        sent=len(records),
        outcomes=dict(Counter(r.outcome or UNFINISHED for r in records)),
        high_ttft_p50=None if p50 is None else p50.value,
        high_ttft_p99=None if p99 is None else p99.value,
        high_ttft_lower_bound=p99 is not None and p99.lower_bound,
        high_itl_p99=percentile(high_gaps, 99) if high_gaps else None,
        ttft=distribution([t for r in done if (t := r.ttft) is not None]),
        tpot=distribution([t for r in done if (t := tpot(r)) is not None]),
        itl=distribution([g for r in done for g in r.meter.gaps]),
        e2e=distribution([t for r in done if (t := r.e2e) is not None]),
        good=goodput(records, slos),
        tokens_per_s=sum(per_tenant.values()) / run.duration if run.duration else 0.0,
        tenant_tokens=per_tenant,
        jain=jain_index(list(per_tenant.values())) if per_tenant else None,
    )


def _ms(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds * 1e3


def _run_figures(f: RunFigures, base: RunFigures, off: RunFigures | None) -> list[Figure]:
    lower = "a lower bound: starved requests count with their wait so far"
    protected = f.mode == "on" and f.load >= 2
    out = [
        Figure(
            f"interactive TTFT p99, {f.label}",
            _ms(f.high_ttft_p99),
            "ms",
            _ms(base.high_ttft_p99),
            "unloaded interactive TTFT p99",
            Target("<=", 1.5, "<= 1.5x unloaded", on="ratio") if protected else None,
            note=lower * f.high_ttft_lower_bound,
        ),
        Figure(
            f"interactive ITL p99, {f.label}",
            _ms(f.high_itl_p99),
            "ms",
            _ms(base.high_itl_p99),
            "unloaded interactive ITL p99",
        ),
    ]
    if f.mode != "off" and off is not None:
        out.append(
            Figure(
                f"goodput, {f.label}",
                f.good / f.duration,
                "req/s",
                off.good / off.duration,
                "flow control off, same plan",
            )
        )
    if f.jain is not None:
        out.append(
            Figure(
                f"Jain's index, equal tenants, {f.label}",
                f.jain,
                "",
                off.jain if off is not None and f.mode != "off" else None,
                "flow control off, same plan" if f.mode != "off" else "",
                # Tenants contend only in overload; below it each gets what it asks for,
                # and the index measures the draw of request sizes, not the gateway.
                Target(">=", 0.99, ">= 0.99") if f.mode == "on" and f.load > 1 else None,
            )
        )
    return out


def quality_figures(
    figs: Sequence[RunFigures], baselines: dict[RunMode, RunFigures]
) -> list[Figure]:
    """Part 4's headline figures: latency ratios to unloaded, goodput, fairness, and work
    conservation at the lowest load (with flow control / without)."""
    off_by_load = {f.load: f for f in figs if f.mode == "off"}
    out: list[Figure] = []
    for f in figs:
        base = baselines.get("target" if f.mode == "target" else "on")
        if base is not None:
            out += _run_figures(f, base, off_by_load.get(f.load))
    if off_by_load:
        low = min(off_by_load)
        for f in figs:
            if f.load == low and f.mode != "off":
                out.append(
                    Figure(
                        f"work conservation: output tokens/s, {f.label}",
                        f.tokens_per_s,
                        "tok/s",
                        off_by_load[low].tokens_per_s,
                        "flow control off, same plan",
                        Target(">=", 0.98, ">= 98 % of without", on="ratio")
                        if f.mode == "on"
                        else None,
                        note="tokens streamed during the arrival window, lowest load",
                    )
                )
    return out


def _dist(d: Distribution | None) -> str:
    if d is None:
        return "-"
    return f"{d.mean * 1e3:.0f} / {d.p50 * 1e3:.0f} / {d.p99 * 1e3:.0f}"


def runs_tables(figs: Sequence[RunFigures]) -> list[str]:
    """The detail tables: vLLM-style latency per run, outcomes, tokens per tenant."""
    latency = [
        "| run | sent | TTFT ms mean / p50 / p99 | TPOT ms | ITL ms | E2E ms | goodput req/s |"
        " tok/s | Jain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    outcomes = sorted({k for f in figs for k in f.outcomes})
    counts = ["| run | " + " | ".join(outcomes) + " |", "|---" * (len(outcomes) + 1) + "|"]
    tenants = sorted({k for f in figs for k in f.tenant_tokens})
    per_tenant = ["| run | " + " | ".join(tenants) + " |", "|---" * (len(tenants) + 1) + "|"]
    for f in figs:
        jain = "-" if f.jain is None else f"{f.jain:.4f}"
        latency.append(
            f"| {f.label} | {f.sent} | {_dist(f.ttft)} | {_dist(f.tpot)} | {_dist(f.itl)} |"
            f" {_dist(f.e2e)} | {f.good / f.duration:.2f} | {f.tokens_per_s:,.0f} | {jain} |"
        )
        counts.append(
            f"| {f.label} | " + " | ".join(str(f.outcomes.get(k, 0)) for k in outcomes) + " |"
        )
        per_tenant.append(
            f"| {f.label} | " + " | ".join(f"{f.tenant_tokens[k]:,}" for k in tenants) + " |"
        )
    return ["\n".join(latency), "\n".join(counts), "\n".join(per_tenant)]
