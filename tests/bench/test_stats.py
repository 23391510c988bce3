"""The harness's statistics, with literal inputs."""

from __future__ import annotations

import pytest

from sluicegate.bench import (
    Slo,
    censored_percentile,
    distribution,
    goodput,
    jain_index,
    meets_slo,
    percentile,
    token_times,
    tokens_until,
    tpot,
)
from sluicegate.demo import FAILED, UNFINISHED

from .helpers import record


def test_percentile_interpolates_like_numpy() -> None:
    """Linear interpolation between closest ranks (numpy's default, vLLM's choice)."""
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_or_out_of_range_is_an_error() -> None:
    """No values, or q outside [0, 100], raise ValueError."""
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_censored_percentile_is_a_lower_bound_only_when_a_censored_sample_can_move_it() -> None:
    """A starved request at or below the ranks used makes the percentile a lower bound."""
    served = [(float(v), False) for v in range(1, 100)]
    assert censored_percentile([*served, (200.0, False)], 50) == (50.5, False)
    assert censored_percentile([*served, (200.0, True)], 50) == (50.5, False)
    value, lower = censored_percentile([*served, (200.0, True)], 99)
    assert value == pytest.approx(99 + 101 * 0.01)
    assert lower


def test_distribution_gives_mean_median_p99() -> None:
    """Mean, p50 and p99 of the values; None for no values."""
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d is not None
    assert (d.count, d.mean, d.p50) == (5, 3.0, 3.0)
    assert d.p99 == pytest.approx(4.96)
    assert distribution([]) is None


def test_jain_index_of_equal_and_skewed_shares() -> None:
    """1 for equal shares, 1/n when one gets everything, in between otherwise."""
    assert jain_index([5.0, 5.0, 5.0, 5.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([1.0, 2.0]) == pytest.approx(9 / 10)
    assert jain_index([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        jain_index([])
    with pytest.raises(ValueError):
        jain_index([1.0, -1.0])


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
