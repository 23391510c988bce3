"""Admission corner cases: nowait, fast-reject bands, and rejections that leave no state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import sluicegate as sg
from sluicegate._core._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


def test_nowait_respects_the_band_ceiling(make: Callable[..., Harness]) -> None:
    """A nowait submission above its band's max_utilization raises, and leaves nothing."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_utilization=0.5)), saturated=False)
    h.gate.load = 0.7
    with pytest.raises(sg.WouldBlock):
        h.submit("a", nowait=True)
    stats = h.core.statistics()
    assert stats.submitted == 0 and stats.queued_requests == 0 and not stats.flows


def test_nowait_never_queues(make: Callable[..., Harness]) -> None:
    """Dispatched or raise: saturation, waiting work and band limits all raise WouldBlock."""
    h = make(saturated=False)
    assert h.submit("a", nowait=True).state is State.DISPATCHED
    h.gate.saturated = True
    with pytest.raises(sg.WouldBlock):
        h.submit("b", nowait=True)
    queued = h.submit("c")
    h.gate.saturated = False
    with pytest.raises(sg.WouldBlock):
        h.submit("d", nowait=True)  # "c" waits in the same band: no overtaking
    assert queued.state is State.QUEUED
    assert h.core.statistics().submitted == 2


def test_fast_reject_band_is_served_while_a_lower_band_waits_at_its_ceiling(
    make: Callable[..., Harness],
) -> None:
    """A max_requests=0 band dispatches when the pool has room, whatever waits below it."""
    config = sg.FlowControlConfig(
        bands={
            5: sg.BandConfig(max_requests=0),
            -1: sg.BandConfig(max_utilization=0.5),
        }
    )
    h = make(config, saturated=False)
    h.gate.load = 0.7
    parked = h.submit("batch", -1)
    assert parked.state is State.QUEUED and h.dispatch() == []
    assert h.submit("chat", 5).state is State.DISPATCHED
    assert parked.state is State.QUEUED


def test_higher_band_dispatches_at_once_past_lower_waiting_work(
    make: Callable[..., Harness],
) -> None:
    """Immediate dispatch needs an empty queue only at the request's priority and above."""
    config = sg.FlowControlConfig(negative_band=sg.BandConfig(max_utilization=0.5))
    h = make(config, saturated=False)
    h.gate.load = 0.7
    h.submit("batch", -3)
    assert h.submit("std", 0).state is State.DISPATCHED
    h.submit("batch", 2)  # a band above with work: wait behind it
    h.gate.saturated = True
    assert h.submit("std", 0).state is State.QUEUED


def test_rejected_requests_create_no_flows(make: Callable[..., Harness]) -> None:
    """Fairness ids are client-chosen: a rejection must not keep a flow for them."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=1)))
    h.submit("holder")
    for i in range(100):
        with pytest.raises(sg.QueueFullError):
            h.submit(f"tenant-{i}")
    stats = h.core.statistics()
    assert list(stats.flows) == [sg.FlowKey("holder", 0)]
    assert stats.outcomes[sg.Outcome.REJECTED_CAPACITY] == 100
    assert len(h.core.registry._idle_flows) == 0


def test_rejection_in_a_new_dynamic_band_leaves_no_band(make: Callable[..., Harness]) -> None:
    """A band first seen on a rejected request is not kept (nothing can collect it)."""
    h = make(sg.FlowControlConfig(max_requests=0))
    with pytest.raises(sg.QueueFullError):
        h.submit("a", 7)
    stats = h.core.statistics()
    assert list(stats.bands) == [0] and not stats.flows
    assert h.core.next_deadline() is None


def test_rejection_keeps_an_existing_flow_on_its_idle_clock(make: Callable[..., Harness]) -> None:
    """A rejected request of a known, idle flow does not restart or cancel its collection."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=10.0, max_requests=0), saturated=False)
    h.release(h.submit("a", now=0.0), now=0.0)
    h.gate.saturated = True
    with pytest.raises(sg.QueueFullError):
        h.submit("a", now=5.0)
    assert h.core.next_deadline() == 10.0
    h.core.expire(10.0, h.gate)
    assert not h.core.statistics().flows
