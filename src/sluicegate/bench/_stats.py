"""The harness's statistics: vLLM-style latency metrics and goodput.

Pure functions over numbers and `RequestRecord`s; nothing here reads a clock, so every
figure is unit-tested with literal inputs.

Definitions (those of vLLM's ``benchmark_serving``, so figures compare):

* **TTFT**: sending to the first streamed token (`RequestRecord.ttft`).
* **TPOT**: per request, ``(last token - first token) / (tokens - 1)``: the mean time per
  output token after the first. Requests with one token have none.
* **ITL**: every gap between consecutive token arrivals, pooled over all requests.
* **E2E**: sending to the end of a completed stream.
* Percentiles, censored percentiles and Jain's index are `sluicegate.testbed`'s, the one
  definition the demo and `benchmarks/` use as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from sluicegate.testbed import COMPLETED, percentile

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sluicegate.testbed import RequestRecord

__all__ = [
    "Distribution",
    "Slo",
    "distribution",
    "goodput",
    "meets_slo",
    "token_times",
    "tokens_until",
    "tpot",
]


@final
@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, median and p99 of a metric, in seconds, over `count` samples."""

    count: int
    mean: float
    p50: float
    p99: float


def distribution(values: Sequence[float]) -> Distribution | None:
    """Mean, p50 and p99 of `values`; None when there are none."""
    if not values:
        return None
    return Distribution(
        len(values), sum(values) / len(values), percentile(values, 50), percentile(values, 99)
    )


def tpot(record: RequestRecord) -> float | None:
    """Seconds per output token after the first; None with fewer than two tokens."""
    meter = record.meter
    if meter.tokens < 2 or meter.first_token_at is None or meter.last_token_at is None:
        return None
    return (meter.last_token_at - meter.first_token_at) / (meter.tokens - 1)


def token_times(record: RequestRecord) -> list[float]:
    """Arrival time of every token of `record`, rebuilt from its first token and gaps."""
    first = record.meter.first_token_at
    if first is None:
        return []
    times = [first]
    for gap in record.meter.gaps:
        times.append(times[-1] + gap)
    return times


def tokens_until(record: RequestRecord, end: float) -> int:
    """Tokens of `record` that arrived at or before loop time `end`."""
    return sum(1 for t in token_times(record) if t <= end)


@final
@dataclass(frozen=True, slots=True)
class Slo:
    """A service-level objective: a request is *good* if it completed with a TTFT of at
    most `ttft_s` and a TPOT (its mean inter-token latency) of at most `itl_s`."""

    ttft_s: float
    itl_s: float


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    """Whether `record` completed within `slo` (one token: TTFT alone decides)."""
    if record.outcome != COMPLETED or record.ttft is None or record.ttft > slo.ttft_s:
        return False
    per_token = tpot(record)
    return per_token is None or per_token <= slo.itl_s


def goodput(records: Iterable[RequestRecord], slos: dict[str, Slo]) -> int:
    """How many `records` met the `Slo` of their objective (objectives without one: none)."""
    return sum(
        1
        for r in records
        if (slo := slos.get(r.planned.objective)) is not None and meets_slo(r, slo)
    )
