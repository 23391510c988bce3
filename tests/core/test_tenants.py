"""Per-tenant ceilings in the core: max_in_flight parks the tenant's flows without
blocking anyone else, max_queued refuses; literal `now` throughout."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sluicegate as sg
from sluicegate._core._tenants import Parked
from sluicegate._core._ticket import State
from sluicegate.testing import ManualDetector

from .conftest import Harness

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate._core._policies import FairnessPolicy
    from sluicegate._core._registry import Flow
    from sluicegate._core._ticket import Ticket


def _config(fairness: str = "global-strict", **tenants: sg.TenantLimits) -> sg.FlowControlConfig:
    return sg.FlowControlConfig(
        default_ttl=None,
        default_band=sg.BandConfig(fairness=fairness),
        bands={5: sg.BandConfig(fairness=fairness), 0: sg.BandConfig(fairness=fairness)},
        tenants=tenants,
    )


def test_tenant_limits_are_validated() -> None:
    with pytest.raises(sg.ConfigError, match="max_in_flight"):
        sg.TenantLimits(max_in_flight=0)
    with pytest.raises(sg.ConfigError, match="max_queued"):
        sg.TenantLimits(max_queued=-1)
    with pytest.raises(sg.ConfigError, match="TenantLimits"):
        sg.FlowControlConfig(tenants={"a": 3})  # type: ignore[dict-item]  # deliberately wrong


@pytest.mark.parametrize("fairness", ["global-strict", "round-robin", "token-fair"])
def test_a_tenant_at_its_ceiling_does_not_block_its_band(
    make: Callable[..., Harness], fairness: str
) -> None:
    h = make(_config(fairness, a=sg.TenantLimits(max_in_flight=2)), saturated=True)
    a = [h.submit("a", now=0.0) for _ in range(5)]  # a first: it heads the band
    b = [h.submit("b", now=1.0) for _ in range(3)]
    h.gate.saturated = False
    out = h.dispatch(now=2.0)
    assert sum(t.key.id == "a" for t in out) == 2
    assert all(t.state is State.DISPATCHED for t in b)
    assert [t.state for t in a[2:]] == [State.QUEUED] * 3
    assert h.core.tenants["a"].in_flight == 2 and h.core.tenants["a"].queued == 3
    # A release takes "a" below its ceiling: exactly one more of its requests goes.
    h.release(out[0], now=3.0)
    again = h.dispatch(now=3.0)
    assert [t.key.id for t in again] == ["a"]
    assert h.core.tenants["a"].in_flight == 2


def test_the_ceiling_spans_bands_and_arrivals_wait(make: Callable[..., Harness]) -> None:
    h = make(_config(a=sg.TenantLimits(max_in_flight=1)), saturated=False)
    first = h.submit("a", 5, now=0.0)
    assert first.state is State.DISPATCHED
    low = h.submit("a", 0, now=1.0)  # another band, same tenant: it waits
    assert low.state is State.QUEUED and h.dispatch(now=1.0) == []
    other = h.submit("b", 0, now=1.0)  # held work does not make others queue
    assert other.state is State.DISPATCHED
    with pytest.raises(sg.WouldBlock):
        h.submit("a", 5, now=1.0, nowait=True)
    h.release(first, now=2.0)
    assert h.dispatch(now=2.0) == [low]


def test_max_queued_refuses_with_queue_full(make: Callable[..., Harness]) -> None:
    h = make(_config(a=sg.TenantLimits(max_queued=2)), saturated=True)
    h.submit("a", 5)
    h.submit("a", 0)
    with pytest.raises(sg.QueueFullError, match="tenant a holds its max_queued=2"):
        h.submit("a", 5)
    h.submit("b", 5)  # another tenant is not affected
    stats = h.core.statistics()
    assert stats.queued_requests == 3 and stats.outcomes[sg.Outcome.REJECTED_CAPACITY] == 1


def test_parked_tickets_can_be_cancelled_and_expire(make: Callable[..., Harness]) -> None:
    h = make(_config(a=sg.TenantLimits(max_in_flight=1)), saturated=False)
    running = h.submit("a")
    waiting = [h.submit("a", ttl=5.0), h.submit("a", ttl=10.0)]
    h.submit("b", ttl=100.0)  # let the policy select "a" while it is full
    h.gate.saturated = True
    h.submit("c")
    h.gate.saturated = False
    h.dispatch(now=1.0)
    flow = h.core.registry.bands[0].flows["a"]
    assert isinstance(flow.queue, Parked)
    assert h.core.registry.bands[0].held_requests == 2
    assert h.core.cancel(waiting[0], now=2.0)
    assert h.core.statistics().flows[sg.FlowKey("a", 0)].queued_requests == 1
    assert h.core.expire(11.0, h.gate) == [waiting[1]]
    band = h.core.registry.bands[0]
    assert band.held_requests == 0 and band.queued_requests == 0
    assert h.core.tenants["a"].queued == 0
    assert h.release(running, now=12.0)
    assert h.core.tenants["a"].in_flight == 0 and not h.core.tenants["a"].parked


def test_dispatch_cost_does_not_grow_with_blocked_tenants(make: Callable[..., Harness]) -> None:
    """Selections per dispatch stay at one however many tenants sit at their ceiling."""

    def selections(blocked: int) -> int:
        tenants = {f"t{i}": sg.TenantLimits(max_in_flight=1) for i in range(blocked)}
        h = make(_config("token-fair", **tenants), saturated=False)
        for i in range(blocked):  # each blocked tenant: one running, three waiting
            for _ in range(4):
                h.submit(f"t{i}")
        h.dispatch()
        band = h.core.registry.bands[0]
        counting = _CountingPolicy(band.fairness)
        band.fairness = counting
        for n in range(200):
            h.gate.saturated = True
            ticket = h.submit("free", now=float(n))
            h.gate.saturated = False
            assert h.dispatch(now=float(n)) == [ticket]
        return counting.selections

    assert selections(0) == selections(500) == 200


class _CountingPolicy:
    """Delegates to a fairness policy and counts its selections."""

    name: ClassVar[str] = "counting"

    def __init__(self, inner: FairnessPolicy) -> None:
        self.inner = inner
        self.selections = 0

    def head_changed(self, flow: Flow, /) -> None:
        self.inner.head_changed(flow)

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None:
        self.inner.dispatched(flow, ticket)

    def charge(self, flow: Flow, service: float, /) -> None:
        self.inner.charge(flow, service)

    def select(self) -> Flow | None:
        self.selections += 1
        return self.inner.select()


def test_reconfigure_keeps_work_and_recounts(make: Callable[..., Harness]) -> None:
    h = make(_config(a=sg.TenantLimits(max_in_flight=1)), saturated=False)
    running = h.submit("a")
    queued = [h.submit("a") for _ in range(3)]
    h.submit("b")
    # A tenant appears with work already queued and in flight: counted from its flows.
    h.core.reconfigure(_config(b=sg.TenantLimits(max_in_flight=1)), now=1.0)
    assert "a" not in h.core.tenants
    assert h.core.tenants["b"].queued == 1  # waits behind "a" in the band
    assert h.core.registry.bands[0].held_requests == 0
    assert len(h.dispatch(now=1.0)) == 4  # a is unlimited now
    assert h.core.tenants["b"].in_flight == 1
    assert all(t.state is State.DISPATCHED for t in [running, *queued])
    h.core.reconfigure(_config(a=sg.TenantLimits(max_in_flight=2)), now=2.0)
    assert h.core.tenants["a"].in_flight == 4


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["submit", "release", "dispatch", "cancel"]),
            st.integers(0, 3),  # tenant
            st.sampled_from([0, 5]),  # band
        ),
        max_size=80,
    ),
    ceilings=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    fairness=st.sampled_from(["global-strict", "round-robin", "token-fair"]),
)
def test_ceilings_hold_others_are_served_and_counts_conserve(
    ops: list[tuple[str, int, int]], ceilings: tuple[int, int], fairness: str
) -> None:
    limits = {"t0": sg.TenantLimits(max_in_flight=ceilings[0], max_queued=6)}
    limits["t1"] = sg.TenantLimits(max_in_flight=ceilings[1])
    h = Harness(_config(fairness, **limits), ManualDetector())
    capacity = 6
    live: list[Ticket] = []
    now = 0.0
    for op, tid, band in ops:
        now += 1.0
        h.gate.saturated = h.core.in_flight >= capacity
        if op == "submit":
            try:
                live.append(h.submit(f"t{tid}", band, now=now))
            except sg.QueueFullError:
                assert tid == 0 and h.core.tenants["t0"].queued == 6
        elif op == "release":
            flying = [t for t in live if t.state is State.DISPATCHED]
            if flying:
                h.release(flying[tid % len(flying)], now=now)
        elif op == "cancel":
            waiting = [t for t in live if t.state is State.QUEUED]
            if waiting:
                h.core.cancel(waiting[tid % len(waiting)], now)
        h.gate.saturated = h.core.in_flight >= capacity
        if op == "dispatch" or not h.gate.saturated:
            for ticket in h.core.dispatch(now, h.gate):
                h.gate.saturated = h.core.in_flight >= capacity
                assert ticket.state is State.DISPATCHED
        _check(h, live, capacity)


def _check(h: Harness, live: list[Ticket], capacity: int) -> None:
    core = h.core
    for tenant in core.tenants.values():
        mine = [t for t in live if t.key.id == tenant.id]
        flying = sum(t.state is State.DISPATCHED for t in mine)
        assert tenant.max_in_flight is not None
        assert flying == tenant.in_flight <= tenant.max_in_flight
        assert sum(t.state is State.QUEUED for t in mine) == tenant.queued
    queued = [t for t in live if t.state is State.QUEUED]
    assert core.queued_requests == len(queued)
    assert core.in_flight == sum(t.state is State.DISPATCHED for t in live)
    for band in core.registry.levels:
        held = sum(t._flow.band is band and isinstance(t._flow.queue, Parked) for t in queued)
        assert band.held_requests == held
    if core.in_flight < capacity:
        # Work conserving: whatever still waits belongs to a tenant at its ceiling.
        for ticket in queued:
            owner = core.tenants.get(ticket.key.id)
            assert owner is not None and owner.full, ticket
    stats = core.statistics()
    finished = sum(stats.outcomes.values()) - stats.outcomes[sg.Outcome.DISPATCHED]
    assert stats.submitted == stats.queued_requests + stats.outcomes[sg.Outcome.DISPATCHED] + (
        finished
    )


def test_a_requeued_ticket_moves_from_its_tenants_in_flight_to_its_queue(
    make: Callable[..., Harness],
) -> None:
    h = make(_config(a=sg.TenantLimits(max_in_flight=1)), saturated=False)
    first = h.submit("a", now=0.0)
    second = h.submit("a", now=0.0)  # parked behind the ceiling
    h.dispatch(now=0.0)
    tenant = h.core.tenants["a"]
    assert first.state is State.DISPATCHED and second.state is State.QUEUED
    assert (tenant.in_flight, tenant.queued) == (1, 1)
    # Preempted: the slot comes back, and the tenant is below its ceiling again.
    assert h.core.requeue(first, 1.0, h.gate)
    assert (tenant.in_flight, tenant.queued) == (0, 2)
    out = h.dispatch(now=1.0)
    assert out == [first]  # back at the head of its flow, and the only one allowed
    assert (tenant.in_flight, tenant.queued) == (1, 1)
    assert second.state is State.QUEUED
