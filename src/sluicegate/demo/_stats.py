"""Turning request records and samples into the figures the live view, table and report show.

Pure functions over finished (or in-progress) records. TTFT percentiles count the
requests that never got a token as *censored* samples: a request cut off after waiting
30 s contributes "at least 30 s", not nothing (`sluicegate.testbed.censored_percentile`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from sluicegate.testbed import (
    COMPLETED,
    UNFINISHED,
    Percentile,
    censored_percentile,
    percentile,
    ttft_samples,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sluicegate.testbed import Mode, RequestRecord, Sample, Workload

__all__ = [
    "PriorityFigures",
    "RunResult",
    "RunSummary",
    "TenantFigures",
    "summarize",
    "ttft_over_time",
]


def _plain(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


@final
@dataclass(frozen=True, slots=True)
class PriorityFigures:
    """Latency and outcomes of one objective in one run."""

    objective: str
    priority: int
    sent: int
    completed: int
    ttft_p50: Percentile | None
    ttft_p99: Percentile | None
    itl_p50: float | None
    itl_p99: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    outcomes: dict[str, int]


@final
@dataclass(frozen=True, slots=True)
class TenantFigures:
    """What one tenant sent and got in one run."""

    tenant: str
    sent: int
    completed: int
    tokens: int
    tokens_per_s: float


@final
@dataclass(slots=True)
class RunResult:
    """Everything measured in one run.

    Attributes:
        mode: flow control ``on`` or ``off``.
        label: what the report calls it (``"flow control on"``, ``"unloaded"``...).
        duration: the planned seconds of arrivals.
        planned: requests in the plan.
        records: one per sent request.
        samples: the system sampled during the run.
        started_at: loop time of the run's start (offset 0 of the plan).
        elapsed: seconds from the first arrival to the end of the run.
        interrupted: the run was cut short (Ctrl-C).
    """

    mode: Mode
    label: str
    duration: float
    planned: int
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    started_at: float = 0.0
    elapsed: float = 0.0
    interrupted: bool = False


@final
@dataclass(frozen=True, slots=True)
class RunSummary:
    """The figures of one run, for the table and the report."""

    label: str
    sent: int
    planned: int
    elapsed: float
    interrupted: bool
    outcomes: dict[str, int]
    priorities: tuple[PriorityFigures, ...]
    tenants: tuple[TenantFigures, ...]
    completed_per_s: float

    def priority(self, objective: str) -> PriorityFigures | None:
        """The figures of `objective`, if it sent anything."""
        return next((p for p in self.priorities if p.objective == objective), None)


def _priority_figures(
    objective: str, priority: int, records: Sequence[RequestRecord]
) -> PriorityFigures:
    ttft = ttft_samples(records)
    gaps = [g for r in records for g in r.meter.gaps]
    e2e = [v for r in records if (v := r.e2e) is not None]
    return PriorityFigures(
        objective=objective,
        priority=priority,
        sent=len(records),
        completed=sum(1 for r in records if r.outcome == COMPLETED),
        ttft_p50=censored_percentile(ttft, 50),
        ttft_p99=censored_percentile(ttft, 99),
        itl_p50=_plain(gaps, 50),
        itl_p99=_plain(gaps, 99),
        e2e_p50=_plain(e2e, 50),
        e2e_p99=_plain(e2e, 99),
        outcomes=dict(Counter(r.outcome or UNFINISHED for r in records)),
    )


def summarize(result: RunResult, workload: Workload) -> RunSummary:
    """The figures of a finished run."""
    records = result.records
    elapsed = max(result.elapsed, 1e-9)
    priorities = tuple(
        _priority_figures(o.name, o.priority, [r for r in records if r.planned.objective == o.name])
        for o in workload.objectives
    )
    tenants = []
    for tenant in workload.tenants:
        mine = [r for r in records if r.planned.tenant == tenant.name]
        done = [r for r in mine if r.outcome == COMPLETED]
        tokens = sum(r.meter.tokens for r in done)
        tenants.append(TenantFigures(tenant.name, len(mine), len(done), tokens, tokens / elapsed))
    outcomes = Counter(r.outcome or UNFINISHED for r in records)
    return RunSummary(
        label=result.label,
        sent=len(records),
        planned=result.planned,
        elapsed=result.elapsed,
        interrupted=result.interrupted,
        outcomes=dict(outcomes),
        priorities=priorities,
        tenants=tuple(tenants),
        completed_per_s=outcomes.get(COMPLETED, 0) / elapsed,
    )


def ttft_over_time(
    records: Iterable[RequestRecord], start: float, bucket_s: float
) -> list[tuple[float, Percentile, Percentile]]:
    """(bucket middle, p50, p99) of TTFT by when requests were sent, `bucket_s` wide.

    Args:
        records: the requests of one priority.
        start: the run's start (loop time); bucket 0 begins there.
        bucket_s: bucket width in seconds (> 0).
    """
    buckets: dict[int, list[RequestRecord]] = {}
    for record in records:
        buckets.setdefault(int((record.sent_at - start) // bucket_s), []).append(record)
    out = []
    for index in sorted(buckets):
        samples = ttft_samples(buckets[index])
        p50, p99 = censored_percentile(samples, 50), censored_percentile(samples, 99)
        if p50 is not None and p99 is not None:
            out.append(((index + 0.5) * bucket_s, p50, p99))
    return out
