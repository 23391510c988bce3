"""Part 6 (issue 15): its figures from literal attempts, and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from sluicegate.bench._lookahead import (
    Attempt,
    LookaheadOptions,
    LookaheadRun,
    Sent,
    _runs,
    calibration,
    retries,
)
from sluicegate.testbed import PlannedRequest


def _sent(
    slo_ms: float, eta_ms: float | None, queue_ms: float, outcome: str = "Dispatched"
) -> Sent:
    planned = PlannedRequest(0, 0.0, "t", "standard", 0, 10, 10)
    first = Attempt(0.0, 200, outcome, queue_ms, eta_ms)
    return Sent(planned, slo_ms, first)


def test_calibration_counts_errors_and_false_rejects() -> None:
    """Errors are predicted - actual over dispatched waits with a prediction; a false
    reject is a would-be reject (eta > SLO x 1.25) that in fact waited within its SLO."""
    run = LookaheadRun("x", early_reject=False)
    run.sent = [
        _sent(1000, 500, 600),  # fine: error -100
        _sent(1000, 2000, 900),  # would reject, started in time: a false reject
        _sent(1000, 3000, 2500),  # would reject, rightly
        _sent(1000, None, 0),  # dispatched at once: no prediction
        _sent(1000, 5000, 20000, outcome="EvictedTTL"),  # not dispatched: not counted
    ]
    cal = calibration(run)
    assert cal["predicted"] == 3
    assert cal["would_reject"] == 2 and cal["false_rejects"] == 1
    assert cal["false_reject_share"] == 0.5
    assert cal["abs_error_p50_ms"] == 500.0


def test_retries_count_only_those_not_refused_again() -> None:
    """Retries after a Retry-After and after the SDK's own backoff are counted apart;
    an advised retry that never came back is counted as such, not as a success."""
    run = LookaheadRun("x", early_reject=True)
    a, b, c, d = (_sent(1000, None, 0, outcome="RejectedCapacity") for _ in range(4))
    for refused in (a, b, c, d):
        assert refused.first is not None
        refused.first.status = 429
    for advised in (a, b, c):
        advised.first.retry_after = 3  # type: ignore[union-attr]  # set just above
        advised.first.retry_reason = "reserved"  # type: ignore[union-attr]
    d.first.retry_reason = "horizon"  # type: ignore[union-attr]
    a.retry = Attempt(1.0, 200, "Dispatched")
    b.retry = Attempt(1.0, 429, "RejectedCapacity", retry_reason="reserved")
    c.retry = Attempt(1.0)  # sent, no answer within the run
    d.retry = Attempt(1.0, 200, "Dispatched")
    run.sent = [a, b, c, d]
    got = retries(run)
    assert got["refused"] == 4 and got["advised"] == 3 and got["advised_share"] == 0.75
    assert got["retries"] == 2 and got["got_in"] == 1 and got["share"] == 0.5
    assert got["not_back"] == 1
    assert (got["unadvised_retries"], got["unadvised_in"]) == (1, 1)
    assert got["reasons"] == {"reserved": 3, "horizon": 1}
    assert got["advised_retry_refusals"] == {"RejectedCapacity/reserved": 1}
    assert got["first_outcomes"] == {"RejectedCapacity": 4}
    assert got["answered"] == 4 and got["first_admitted_share"] == 0.0
    assert got["served_share"] == pytest.approx(2 / 4)


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_tiny_run_answers_every_request() -> None:
    """Open and closed loop, early rejection off and on: every request has its attempt,
    and answers came (requests cut off at the end of the run may have none)."""
    options = LookaheadOptions(duration=1.0, grace_s=1.0, backends=1)
    runs = await _runs(options)
    assert [r.early_reject for r in runs] == [False, True, True] * 2
    assert [r.reservations for r in runs] == [True, True, False] * 2
    assert [r.retrying for r in runs] == [False, True, True] * 2
    for run in runs:
        assert run.sent
        assert all(s.first is not None for s in run.sent)
        assert any(s.first is not None and s.first.status == 200 for s in run.sent)
