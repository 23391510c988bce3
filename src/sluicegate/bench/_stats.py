"""The harness's statistics: percentiles, vLLM-style latency metrics, goodput, Jain's index.

Pure functions over numbers and `RequestRecord`s; nothing here reads a clock, so every
figure is unit-tested with literal inputs.

Definitions (those of vLLM's ``benchmark_serving``, so figures compare):

* **TTFT**: sending to the first streamed token (`RequestRecord.ttft`).
* **TPOT**: per request, ``(last token - first token) / (tokens - 1)``: the mean time per
  output token after the first. Requests with one token have none.
* **ITL**: every gap between consecutive token arrivals, pooled over all requests.
* **E2E**: sending to the end of a completed stream.
* Percentiles interpolate linearly between closest ranks (numpy's default, which vLLM uses).

TTFT percentiles of an overloaded run must not forget the requests that starved: a request
still waiting for its first token when the run was cut off counts with its wait so far, as
a *censored* sample, and a percentile that such a sample can move is a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from sluicegate.demo import COMPLETED

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sluicegate.demo import RequestRecord

__all__ = [
    "Distribution",
    "Slo",
    "censored_percentile",
    "distribution",
    "goodput",
    "jain_index",
    "meets_slo",
    "percentile",
    "token_times",
    "tokens_until",
    "tpot",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` percentile (0 <= q <= 100) of `values`, interpolated linearly.

    Raises:
        ValueError: `values` is empty or `q` is out of range.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def censored_percentile(samples: Sequence[tuple[float, bool]], q: float) -> tuple[float, bool]:
    """The `q` percentile of (value, censored) samples, and whether it is a lower bound.

    A censored sample is "at least this much". The result is a lower bound when a
    censored sample sits at or below either rank the interpolation uses: its true value
    could be larger and would move the percentile up.

    Raises:
        ValueError: `samples` is empty or `q` is out of range.
    """
    value = percentile([v for v, _ in samples], q)
    ordered = sorted(samples)
    high = min(math.floor((len(ordered) - 1) * q / 100) + 1, len(ordered) - 1)
    return value, any(censored for _, censored in ordered[: high + 1])


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


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``: 1 when all are equal, 1/n
    when one gets everything. All zeros count as equal (1.0).

    Raises:
        ValueError: `values` is empty or has a negative value.
    """
    if not values:
        raise ValueError("Jain's index of no values")
    if any(v < 0 for v in values):
        raise ValueError(f"Jain's index needs non-negative values, got {list(values)!r}")
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)
