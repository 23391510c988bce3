"""Admission limits, TTL, cancellation, no-endpoint handling, close, statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import sluicegate as sg
from sluicegate._core._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


def test_band_request_limit_rejects_at_once(make: Callable[..., Harness]) -> None:
    """Over the band's max_requests: QueueFullError, counted as RejectedCapacity."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=2)))
    h.submit()
    h.submit()
    with pytest.raises(sg.QueueFullError, match="max_requests=2"):
        h.submit()
    stats = h.core.statistics()
    assert stats.outcomes[sg.Outcome.REJECTED_CAPACITY] == 1
    assert stats.queued_requests == 2


def test_byte_limits_use_the_real_size(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 1): byte limits are enforced with the request's size."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_bytes=100)))
    h.submit(size=60)
    h.submit(size=40)  # exactly at the limit: allowed
    with pytest.raises(sg.QueueFullError, match="max_bytes=100"):
        h.submit(size=1)
    h.submit(size=0)  # zero bytes still fit a byte limit...
    assert h.core.statistics().bands[0].queued_bytes == 100


def test_global_limits_span_bands(make: Callable[..., Harness]) -> None:
    """Global max_requests and max_bytes count every band (displacement off)."""
    h = make(sg.FlowControlConfig(max_requests=2, max_bytes=50, displacement=False))
    h.submit(priority=1, size=10)
    with pytest.raises(sg.QueueFullError, match="the controller would exceed max_bytes=50"):
        h.submit(priority=2, size=41)
    h.submit(priority=2, size=40)
    with pytest.raises(sg.QueueFullError, match="the controller holds its max_requests=2"):
        h.submit(priority=3)


def test_zero_capacity_band_is_a_fast_reject(make: Callable[..., Harness]) -> None:
    """max_requests=0: dispatched when capacity is free, rejected instead of queued."""
    h = make(sg.FlowControlConfig(negative_band=sg.BandConfig(max_requests=0)), saturated=False)
    assert h.submit(priority=-1).state is State.DISPATCHED
    h.gate.saturated = True
    with pytest.raises(sg.QueueFullError):
        h.submit(priority=-1)


def test_ttl_expiry_releases_capacity_at_the_deadline(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 6): no zombie holds capacity until a sweep."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=1)))
    t = h.submit(ttl=5.0, now=10.0)
    assert h.core.next_deadline() == 15.0
    assert h.core.expire(14.999, h.gate) == []
    assert h.core.expire(15.0, h.gate) == [t]
    assert t.outcome is sg.Outcome.EVICTED_TTL
    stats = h.core.statistics()
    assert stats.queued_requests == 0 and stats.outcomes[sg.Outcome.EVICTED_TTL] == 1
    h.submit(now=15.0)  # the slot is free again at once


def test_expired_head_does_not_block_dispatch(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 6): a dead head never passes the saturation check."""
    h = make()
    dead = h.submit("a", 10, ttl=1.0, now=0.0)
    live = h.submit("b", 0, ttl=100.0, now=0.0)
    h.core.expire(1.0, h.gate)
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch(now=1.0) == [live]
    assert dead.state is State.FINISHED


def test_default_ttl_applies_and_inf_means_forever(make: Callable[..., Harness]) -> None:
    """ttl=None takes the default; math.inf never expires."""
    h = make(sg.FlowControlConfig(default_ttl=3.0))
    assert h.submit(now=1.0).expires_at == 4.0
    assert h.submit(ttl=float("inf")).expires_at is None


def test_cancel_leaves_the_queue_at_once(make: Callable[..., Harness]) -> None:
    """A cancelled request frees its place and is counted as EvictedCancelled."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=1)))
    t = h.submit(size=5)
    assert h.core.cancel(t, now=0.0) is True
    assert h.core.cancel(t, now=0.0) is False
    stats = h.core.statistics()
    assert stats.queued_bytes == 0 and stats.outcomes[sg.Outcome.EVICTED_CANCELLED] == 1
    h.submit()


def test_dispatch_skips_a_request_whose_waiter_was_cancelled(make: Callable[..., Harness]) -> None:
    """A waiter cancelled in the same iteration is evicted, never dispatched."""

    class Waiter:
        def cancelled(self) -> bool:
            return True

    h = make()
    dead = h.submit("a")
    dead._waiter = Waiter()
    live = h.submit("b")
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch() == [live]
    assert dead.outcome is sg.Outcome.EVICTED_CANCELLED
    assert h.gate.in_flight == 1


def test_revoke_undoes_a_dispatch_nobody_received(make: Callable[..., Harness]) -> None:
    """Dispatched then cancelled before hand-over: EvictedCancelled, slot returned."""
    h = make()
    t = h.submit()
    h.gate.set(saturated=False, notify=False)
    h.dispatch()
    assert h.core.revoke(t, now=0.0, gate=h.gate) is True
    stats = h.core.statistics()
    assert stats.in_flight == 0 and h.gate.in_flight == 0
    assert stats.dispatched == 0 and stats.outcomes[sg.Outcome.EVICTED_CANCELLED] == 1
    t._handed_over = True
    assert h.core.revoke(t, now=0.0, gate=h.gate) is False


def test_release_is_idempotent(make: Callable[..., Harness]) -> None:
    """Releasing twice gives the slot back once."""
    h = make(saturated=False)
    t = h.submit()
    assert h.release(t) is True
    assert h.release(t) is False
    assert h.gate.in_flight == 0 and h.core.statistics().in_flight == 0


def test_no_endpoints_counts_as_saturated(make: Callable[..., Harness]) -> None:
    """An empty pool holds requests (scale from zero) instead of dispatching."""
    h = make(saturated=False)
    h.gate.endpoints = False
    t = h.submit()
    assert t.state is State.QUEUED
    assert h.dispatch() == []
    h.gate.endpoints = True
    assert h.dispatch() == [t]


def test_no_endpoint_ttl_zero_rejects_at_once(make: Callable[..., Harness]) -> None:
    """no_endpoint_ttl=0: RejectedNoEndpoints when the pool is empty."""
    h = make(sg.FlowControlConfig(no_endpoint_ttl=0))
    h.gate.endpoints = False
    with pytest.raises(sg.NoEndpointsError):
        h.submit()
    assert h.core.statistics().outcomes[sg.Outcome.REJECTED_NO_ENDPOINTS] == 1


def test_no_endpoint_ttl_evicts_only_while_empty(make: Callable[..., Harness]) -> None:
    """EvictedNoEndpoints applies when the budget ends with no backend."""
    h = make(sg.FlowControlConfig(no_endpoint_ttl=2.0, default_ttl=60.0))
    with_backends = h.submit("a", now=0.0)
    assert h.core.expire(2.0, h.gate) == []  # backends exist: keep waiting
    h.gate.endpoints = False
    assert h.core.endpoints_lost(3.0) == [with_backends]
    assert with_backends.outcome is sg.Outcome.EVICTED_NO_ENDPOINTS
    late = h.submit("b", now=3.0)
    assert h.core.expire(5.0, h.gate) == [late]


def test_close_evicts_everything_queued(make: Callable[..., Harness]) -> None:
    """Closing evicts queued requests (EvictedOther) and refuses new ones."""
    h = make()
    queued = [h.submit(f"f{i}", i) for i in range(3)]
    assert sorted(h.core.close(now=0.0), key=lambda t: t.seq) == queued
    with pytest.raises(sg.ControllerClosedError):
        h.submit()
    stats = h.core.statistics()
    assert stats.closed and stats.queued_requests == 0
    assert stats.outcomes[sg.Outcome.EVICTED_OTHER] == 3
    assert stats.outcomes[sg.Outcome.REJECTED_OTHER] == 1
    assert h.core.next_deadline() is None


def test_statistics_snapshot_is_frozen_and_independent(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 3): a snapshot never changes under later activity."""
    h = make()
    h.submit("a", 1, size=3)
    snap = h.core.statistics()
    h.submit("b", 2, size=4)
    assert list(snap.bands) == [1, 0]
    assert snap.queued_bytes == 3 and snap.submitted == 1
    assert snap.flows[sg.FlowKey("a", 1)].oldest_arrival == 0.0
    with pytest.raises(AttributeError):
        snap.queued_bytes = 9  # type: ignore[misc]  # the point of the test


def test_counters_conserve(make: Callable[..., Harness]) -> None:
    """submitted == dispatched + rejected + evicted + queued."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=3)))
    tickets = [h.submit() for _ in range(3)]
    with pytest.raises(sg.QueueFullError):
        h.submit()
    h.core.cancel(tickets[0], now=0.0)
    h.gate.set(saturated=False, notify=False)
    h.dispatch()
    s = h.core.statistics()
    assert s.submitted == 4
    assert s.submitted == s.dispatched + s.rejected + s.evicted + s.queued_requests


def test_reconfigure_keeps_queued_work_and_rebuilds_policies(make: Callable[..., Harness]) -> None:
    """A policy change re-queues what waits; lowered limits drop nothing."""
    h = make(sg.FlowControlConfig(default_ttl=None))
    a1, a2, b1 = h.submit("a"), h.submit("a"), h.submit("b")
    new = sg.FlowControlConfig(
        default_ttl=None, default_band=sg.BandConfig(fairness="round-robin", max_requests=1)
    )
    h.core.reconfigure(new, now=0.0)
    stats = h.core.statistics()
    assert stats.bands[0].queued_requests == 3 and stats.bands[0].fairness == "round-robin"
    with pytest.raises(sg.QueueFullError):
        h.submit("c")
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch() == [a1, b1, a2]


def test_reconfigure_turns_a_band_static(make: Callable[..., Harness]) -> None:
    """A band declared static in a new config keeps that config from then on."""
    h = make()
    h.submit("a", 5)
    h.core.reconfigure(sg.FlowControlConfig(bands={5: sg.BandConfig(max_requests=9)}), now=0.0)
    band = h.core.statistics().bands[5]
    assert band.dynamic is False and band.max_requests == 9 and band.queued_requests == 1


def test_timer_entries_stay_bounded_behind_a_long_waiter(make: Callable[..., Harness]) -> None:
    """One request waiting at the top of the TTL heap does not let dead entries pile up."""
    h = make(sg.FlowControlConfig(default_ttl=1000.0))
    h.submit("stuck", -5, now=0.0)  # lowest band: never served while others wait
    for i in range(5000):
        h.submit("busy", 5, now=float(i))
        assert h.dispatch_one(now=float(i)) is not None
    assert len(h.core._deadlines) <= 4 * h.core.queued_requests + 64 + 1
