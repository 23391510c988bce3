"""The harness's statistics, with literal inputs."""

from __future__ import annotations

import pytest

from sluicegate.bench import (
    Slo,
    distribution,
    goodput,
    meets_slo,
    token_times,
    tokens_until,
    tpot,
)
from sluicegate.testbed import FAILED, UNFINISHED

from .helpers import record


def test_distribution_gives_mean_median_p99() -> None:
    """Mean, p50 and p99 of the values; None for no values."""
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d is not None
    assert (d.count, d.mean, d.p50) == (5, 3.0, 3.0)
    assert d.p99 == pytest.approx(4.96)
    assert distribution([]) is None


def test_tpot_and_itl_from_token_arrivals() -> None:
    """TPOT is (last - first) / (tokens - 1); ITL gaps are the differences between tokens."""
    rec = record(10.0, [10.1, 10.12, 10.15, 10.21])
    assert rec.ttft == pytest.approx(0.1)
    assert tpot(rec) == pytest.approx(0.11 / 3)
    assert rec.meter.gaps == pytest.approx([0.02, 0.03, 0.06])
    assert token_times(rec) == pytest.approx([10.1, 10.12, 10.15, 10.21])
    assert tpot(record(0.0, [1.0])) is None


def test_tokens_until_counts_tokens_arrived_by_then() -> None:
    """Only tokens at or before the end of the window count."""
    rec = record(0.0, [1.0, 2.0, 3.0, 4.0])
    assert tokens_until(rec, 2.0) == 2
    assert tokens_until(rec, 0.5) == 0
    assert tokens_until(record(0.0, [], outcome=FAILED), 9.0) == 0


def test_goodput_counts_completed_requests_within_both_objectives() -> None:
    """TTFT and TPOT must both meet the request objective's SLO; failures never do."""
    slo = Slo(ttft_s=0.5, itl_s=0.05)
    fast = record(0.0, [0.2, 0.24, 0.28])
    slow_first = record(0.0, [0.7, 0.71])
    slow_tokens = record(0.0, [0.1, 0.3, 0.5])
    one_token = record(0.0, [0.3])
    failed = record(0.0, [0.1, 0.11], outcome=FAILED)
    cut = record(0.0, [0.1], outcome=UNFINISHED, end=5.0)
    other = record(0.0, [0.1, 0.11], objective="batch")
    assert meets_slo(fast, slo)
    assert not meets_slo(slow_first, slo)
    assert not meets_slo(slow_tokens, slo)
    assert meets_slo(one_token, slo)
    records = [fast, slow_first, slow_tokens, one_token, failed, cut, other]
    assert goodput(records, {"interactive": slo}) == 2
    assert goodput(records, {"interactive": slo, "batch": slo}) == 3
    assert goodput([], {}) == 0
