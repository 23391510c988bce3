"""Headroom sized to demand, with literal times."""

from __future__ import annotations

from sluicegate import ConcurrencyLimit, FlowControlConfig, FlowKey
from sluicegate._core._headroom import DemandHeadroom
from sluicegate._core._scheduler import Scheduler


def busy_pool(headroom: DemandHeadroom, *, high_rate: float, now: float) -> None:
    """Three seconds of high-band arrivals at `high_rate` and completions at 8/s."""
    t = now - 3.0
    for i in range(int(3.0 * high_rate)):
        headroom.arrived(10, t + i / high_rate)
    for i in range(24):
        headroom.completed(0, 6.0, t + i / 8)
        headroom.completed(10, 1.0, t + i / 8)
    headroom.refresh(now)


def test_no_reserve_when_no_higher_band_sends() -> None:
    headroom = DemandHeadroom()
    for i in range(30):
        headroom.arrived(0, i * 0.1)
        headroom.completed(0, 5.0, i * 0.1)
    assert headroom.reserve_for(0) == 0
    assert headroom.allows(0, free_slots=1, capacity=48)


def test_reserve_follows_demand_and_falls_to_zero_when_it_stops() -> None:
    light, heavy = DemandHeadroom(), DemandHeadroom()
    busy_pool(light, high_rate=1.0, now=10.0)
    busy_pool(heavy, high_rate=4.0, now=10.0)
    assert 1 <= light.reserve_for(0) < heavy.reserve_for(0)
    # The band itself and bands above it keep nothing back for it.
    assert heavy.reserve_for(10) == 0
    assert heavy.reserve_for(20) == 0
    # Bands further down leave at least as much.
    assert heavy.reserve_for(-1) >= heavy.reserve_for(0)
    # The high band goes quiet: one window later nothing is held back.
    heavy.completed(0, 6.0, 13.5)
    assert heavy.reserve_for(0) == 0


def test_reserve_is_bounded_by_what_the_higher_bands_can_use_and_half_the_pool() -> None:
    headroom = DemandHeadroom()
    for i in range(30):
        headroom.arrived(10, i * 0.1)  # 10/s of 0.1 s requests: about one busy slot
        headroom.completed(10, 0.1, i * 0.1)
    assert headroom.reserve_for(0) <= 5
    # Two slots in all: a lower band is never shut out completely.
    assert headroom.allows(0, free_slots=2, capacity=2)


def test_scheduler_keeps_the_reserve_free_for_the_higher_band() -> None:
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig())
    now = 0.0
    # A steady interactive stream (4/s, 1 s each), and a backlog of batch work.
    for i in range(12):
        now = i * 0.25
        ticket = core.submit(FlowKey("i", 10), 0, None, None, now, gate)
        core.release(ticket, now + 0.01, gate)
    batch = [core.submit(FlowKey("b", 0), 0, None, None, now, gate) for _ in range(30)]
    core.dispatch(now, gate)
    running = sum(1 for t in batch if t.dispatched_at is not None)
    reserve = core.headroom.reserve_for(0, busy_slots=running)
    assert reserve >= 1
    # Batch stopped exactly where one more would eat into the reserve.
    assert 20 - running - 1 < reserve <= 20 - running
    # An interactive request arriving now finds its slot free: dispatched on arrival
    # (the batch backlog below it does not hold it back).
    urgent = core.submit(FlowKey("i", 10), 0, None, None, now, gate)
    assert urgent.dispatched_at == now
    assert core.dispatch(now, gate) == []


def test_off_by_config() -> None:
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig(demand_headroom=False))
    for i in range(12):
        ticket = core.submit(FlowKey("i", 10), 0, None, None, i * 0.25, gate)
        core.release(ticket, i * 0.25 + 0.01, gate)
    batch = [core.submit(FlowKey("b", 0), 0, None, None, 3.0, gate) for _ in range(30)]
    core.dispatch(3.0, gate)
    assert sum(1 for t in batch if t.dispatched_at is not None) == 20
