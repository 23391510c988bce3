"""The testbed's one percentile and one Jain's index, with literal inputs."""

from __future__ import annotations

import pytest

from sluicegate.testbed import (
    UNFINISHED,
    Percentile,
    PlannedRequest,
    RequestRecord,
    censored_percentile,
    jain_index,
    percentile,
    ttft_samples,
)


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
    assert censored_percentile([*served, (200.0, False)], 50) == Percentile(50.5, False)
    assert censored_percentile([*served, (200.0, True)], 50) == Percentile(50.5, False)
    p99 = censored_percentile([*served, (200.0, True)], 99)
    assert p99 is not None
    assert p99.value == pytest.approx(99 + 101 * 0.01)
    assert p99.lower_bound
    assert censored_percentile([], 50) is None


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


def test_censored_samples_make_lower_bounds() -> None:
    """A request still waiting counts with its wait so far, flagged as a lower bound."""
    planned = PlannedRequest(0, 0.0, "acme", "interactive", 10, 10, 5)
    served = RequestRecord(planned, sent_at=0.0)
    served.meter.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', 0.2)
    waiting = RequestRecord(planned, sent_at=1.0)
    cut = RequestRecord(planned, sent_at=0.0)
    cut.finish(UNFINISHED, 30.0)
    refused = RequestRecord(planned, sent_at=0.0)
    refused.finish("RejectedCapacity", 0.01)
    samples = ttft_samples([served, waiting, cut, refused], now=5.0)
    assert sorted(samples) == [(pytest.approx(0.2), False), (4.0, True), (30.0, True)]
    p99 = censored_percentile(samples, 99)
    assert p99 is not None
    assert p99.lower_bound
    assert p99.format_ms() == ">= 29.5 s"  # 4 + (30 - 4) x 0.98, interpolated
    assert Percentile(0.0123).format_ms() == "12 ms"
