"""The one percentile and the one Jain's index of the demo, the bench suite and `benchmarks/`.

Percentiles interpolate linearly between closest ranks (numpy's default, which vLLM's
``benchmark_serving`` uses), so every figure of the project is computed the same way and
compares with vLLM's.

A *censored* sample is "at least this much": a request still waiting for its first token
when a run was cut off counts with its wait so far, so a run where requests starve cannot
look better than one where they are served late. A percentile that such a sample can move
is a lower bound, shown with ">=".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from .._core._statistics import jain
from ._traffic import UNFINISHED

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._traffic import RequestRecord

__all__ = [
    "Percentile",
    "censored_percentile",
    "jain_index",
    "percentile",
    "ttft_samples",
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


@final
@dataclass(frozen=True, slots=True)
class Percentile:
    """A percentile of possibly censored samples; `lower_bound` means "at least"."""

    value: float
    lower_bound: bool = False

    def format_ms(self) -> str:
        """E.g. ``"412 ms"``, ``"3.2 s"``, ``">= 31 s"``."""
        prefix = ">= " if self.lower_bound else ""
        if self.value < 1.0:
            return f"{prefix}{self.value * 1000:.0f} ms"
        return f"{prefix}{self.value:.1f} s"


def censored_percentile(samples: Iterable[tuple[float, bool]], q: float) -> Percentile | None:
    """The `q` percentile of (value, censored) samples; None when there are none.

    The result is a lower bound when a censored sample sits at or below either rank the
    interpolation uses: its true value could be larger and would move the percentile up.

    Raises:
        ValueError: `q` is out of range.
    """
    ordered = sorted(samples)
    if not ordered:
        return None
    value = percentile([v for v, _ in ordered], q)
    high = min(math.floor((len(ordered) - 1) * q / 100) + 1, len(ordered) - 1)
    return Percentile(value, any(censored for _, censored in ordered[: high + 1]))


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
    index = jain(values)
    return 1.0 if index is None else index


def ttft_samples(
    records: Iterable[RequestRecord], now: float | None = None
) -> list[tuple[float, bool]]:
    """(TTFT, censored) per request: measured, or the wait so far when no token came.

    Requests refused or failed without a token have no TTFT and are left out; open
    requests count only when `now` is given (the live view).
    """
    out: list[tuple[float, bool]] = []
    for record in records:
        ttft = record.ttft
        if ttft is not None:
            out.append((ttft, False))
        elif record.outcome == UNFINISHED and record.finished_at is not None:
            out.append((record.finished_at - record.sent_at, True))
        elif record.outcome is None and now is not None:
            out.append((now - record.sent_at, True))
    return out
