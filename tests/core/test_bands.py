"""Priority bands: dynamic provisioning, fallback, strict priority, reconcile, GC."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sluicegate as sg
from sluicegate._core._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


def test_band_zero_always_exists(make: Callable[..., Harness]) -> None:
    """Band 0 is built from the default template even with no static bands."""
    stats = make().core.statistics()
    assert list(stats.bands) == [0]
    assert stats.bands[0].dynamic is True


def test_static_band_zero_keeps_its_config(make: Callable[..., Harness]) -> None:
    """A declared band 0 is static and uses its own config."""
    h = make(sg.FlowControlConfig(bands={0: sg.BandConfig(fairness="round-robin")}))
    band = h.core.statistics().bands[0]
    assert band.fairness == "round-robin" and band.dynamic is False


def test_unknown_priority_creates_a_band_from_the_template(make: Callable[..., Harness]) -> None:
    """The first request at a new priority creates its band, visible at once."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=7)))
    h.submit("a", 42)
    band = h.core.statistics().bands[42]
    assert band.dynamic and band.max_requests == 7 and band.queued_requests == 1


def test_negative_priorities_use_the_negative_template(make: Callable[..., Harness]) -> None:
    """p < 0 uses negative_band when configured."""
    h = make(sg.FlowControlConfig(negative_band=sg.BandConfig(max_requests=3)))
    h.submit("a", -1)
    h.submit("a", 1)
    bands = h.core.statistics().bands
    assert bands[-1].max_requests == 3
    assert bands[1].max_requests == 5000


def test_band_creation_is_idempotent(make: Callable[..., Harness]) -> None:
    """Many requests at 50 new priorities create exactly 50 bands."""
    h = make()
    for i in range(1000):
        h.submit(f"t{i % 7}", 100 + i % 50)
    stats = h.core.statistics()
    assert sorted(stats.bands) == [0, *range(100, 150)]
    assert sum(b.queued_requests for b in stats.bands.values()) == 1000


def test_without_dynamic_bands_unknown_priorities_fall_back_to_zero(
    make: Callable[..., Harness],
) -> None:
    """With dynamic_bands=False an unknown priority is served in band 0 and counted."""
    h = make(sg.FlowControlConfig(dynamic_bands=False, bands={10: sg.BandConfig()}))
    t = h.submit("a", 7)
    h.submit("a", 10)
    stats = h.core.statistics()
    assert sorted(stats.bands) == [0, 10]
    assert stats.bands[0].fallback_requests == 1
    assert stats.bands[0].queued_requests == 1
    assert t.priority == 0 and t.key.priority == 7
    assert sg.FlowKey("a", 0) in stats.flows


def test_strict_priority_across_bands(make: Callable[..., Harness]) -> None:
    """Higher bands are drained first, whatever the arrival order."""
    h = make()
    for p in (-1, 0, 5, 0, 10, -1, 5, 10):
        h.submit("a", p)
    h.gate.set(saturated=False, notify=False)
    assert [t.priority for t in h.dispatch()] == [10, 10, 5, 5, 0, 0, -1, -1]


def test_head_of_line_blocking_stops_the_pass(make: Callable[..., Harness]) -> None:
    """Once the gate is saturated nothing is dispatched, from any band."""
    h = make()
    for p in (10, 10, 0):
        h.submit("a", p)
    h.gate.saturated = False
    gate = h.gate
    original = gate.on_dispatch

    def saturate_after_one(ticket: sg.Ticket) -> None:
        original(ticket)
        gate.saturated = True

    gate.on_dispatch = saturate_after_one  # type: ignore[method-assign]  # a test double
    out = h.dispatch()
    assert [t.priority for t in out] == [10]
    assert h.core.blocked
    assert h.core.statistics().bands[0].queued_requests == 1


def test_immediate_dispatch_when_nothing_waits(make: Callable[..., Harness]) -> None:
    """A request arriving at an idle, unsaturated controller never queues."""
    h = make(saturated=False)
    t = h.submit("a", 3)
    assert t.state is State.DISPATCHED and t.queue_time == 0.0
    assert h.core.statistics().bands[3].in_flight == 1


def test_reconcile_creates_missing_and_removes_empty_bands(make: Callable[..., Harness]) -> None:
    """Desired bands appear; undesired empty dynamic bands go; static and 0 stay."""
    h = make(sg.FlowControlConfig(bands={100: sg.BandConfig()}))
    h.submit("a", 7)
    h.core.evict(h.submit("a", 8), sg.Outcome.EVICTED_OTHER, now=0.0)
    h.core.reconcile({5, 7})
    assert sorted(h.core.statistics().bands) == [0, 5, 7, 100]


def test_reconcile_drains_before_removal(make: Callable[..., Harness]) -> None:
    """A band holding requests is retired, keeps serving them, then goes when empty."""
    h = make()
    queued = h.submit("a", 3)
    h.core.reconcile({0})
    band = h.core.statistics().bands[3]
    assert band.retiring and band.queued_requests == 1
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch() == [queued]
    assert 3 in h.core.statistics().bands  # still in flight
    h.release(queued)
    assert 3 not in h.core.statistics().bands


def test_reconcile_can_revive_a_retiring_band(make: Callable[..., Harness]) -> None:
    """A retiring band that becomes desired again stays, with its queue intact."""
    h = make()
    h.submit("a", 3)
    h.core.reconcile(set())
    h.core.reconcile({3})
    band = h.core.statistics().bands[3]
    assert not band.retiring and band.queued_requests == 1


def test_retiring_band_without_dynamic_bands_sends_new_requests_to_zero(
    make: Callable[..., Harness],
) -> None:
    """With dynamic bands off, an undesired band takes no new work."""
    h = make(sg.FlowControlConfig(dynamic_bands=False))
    h.core.reconcile({4})
    h.submit("a", 4)
    h.core.reconcile(set())
    late = h.submit("a", 4)
    assert late.priority == 0


def test_idle_flow_is_collected_after_timeout(make: Callable[..., Harness]) -> None:
    """A flow with nothing queued or in flight goes after flow_idle_timeout; its dynamic
    band goes band_idle_timeout after the same last request, not after the flow."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=10.0, band_idle_timeout=20.0), saturated=False)
    t = h.submit("a", 4, now=0.0)
    h.release(t, now=1.0)
    assert h.core.next_deadline() == 11.0
    h.core.expire(10.9, h.gate)
    assert sg.FlowKey("a", 4) in h.core.statistics().flows
    h.core.expire(11.0, h.gate)
    stats = h.core.statistics()
    assert sg.FlowKey("a", 4) not in stats.flows and 4 in stats.bands
    assert h.core.next_deadline() == 21.0
    h.core.expire(20.9, h.gate)
    assert 4 in h.core.statistics().bands
    h.core.expire(21.0, h.gate)
    assert 4 not in h.core.statistics().bands
    assert h.core.next_deadline() is None


def test_gc_never_collects_a_flow_with_queued_requests(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 2, #1982): waiting longer than the idle timeout is safe."""
    h = make(sg.FlowControlConfig(default_ttl=None, flow_idle_timeout=1.0, band_idle_timeout=1.0))
    waiting = h.submit("a", 4, now=0.0)
    h.core.expire(1000.0, h.gate)
    assert h.core.statistics().flows[sg.FlowKey("a", 4)].queued_requests == 1
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch(now=1000.0) == [waiting]


def test_gc_keeps_a_flow_that_still_has_queued_requests(make: Callable[..., Harness]) -> None:
    """Losing one of two queued requests does not make a flow idle."""
    h = make(sg.FlowControlConfig(default_ttl=None, flow_idle_timeout=1.0))
    first = h.submit("a", 4, now=0.0)
    second = h.submit("a", 4, now=0.0)
    h.core.cancel(first, now=0.0)
    h.core.expire(50.0, h.gate)
    assert h.core.statistics().flows[sg.FlowKey("a", 4)].queued_requests == 1
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch(now=50.0) == [second]


def test_gc_never_collects_a_flow_in_flight(make: Callable[..., Harness]) -> None:
    """An in-flight request keeps its flow and band alive."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=1.0, band_idle_timeout=1.0), saturated=False)
    t = h.submit("a", 4, now=0.0)
    h.core.expire(100.0, h.gate)
    assert h.core.statistics().bands[4].in_flight == 1
    h.release(t, now=100.0)
    assert h.core.statistics().bands[4].in_flight == 0


def test_new_work_resets_the_idle_clock(make: Callable[..., Harness]) -> None:
    """A flow that gets a request again is not collected on its old schedule."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=10.0), saturated=False)
    h.release(h.submit("a", now=0.0), now=0.0)
    h.release(h.submit("a", now=9.0), now=9.5)
    h.core.expire(10.0, h.gate)
    assert sg.FlowKey("a", 0) in h.core.statistics().flows
    h.core.expire(19.5, h.gate)
    assert sg.FlowKey("a", 0) not in h.core.statistics().flows


def test_static_band_survives_gc_with_its_config(make: Callable[..., Harness]) -> None:
    """Static bands are never collected and never re-created from the template.

    Regression (upstream [FINAL] quirk): a used static band became collectable and
    came back with the default template's limits.
    """
    static = sg.BandConfig(fairness="round-robin", max_requests=3)
    h = make(
        sg.FlowControlConfig(bands={9: static}, flow_idle_timeout=1.0, band_idle_timeout=1.0),
        saturated=False,
    )
    h.release(h.submit("a", 9, now=0.0), now=0.0)
    h.core.expire(100.0, h.gate)
    h.core.reconcile(set())
    band = h.core.statistics().bands[9]
    assert (band.max_requests, band.fairness, band.dynamic) == (3, "round-robin", False)


def test_desired_bands_are_not_collected(make: Callable[..., Harness]) -> None:
    """A dynamic band in the desired set is kept however idle."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=1.0, band_idle_timeout=1.0), saturated=False)
    h.core.reconcile({6})
    h.release(h.submit("a", 6, now=0.0), now=0.0)
    h.core.expire(100.0, h.gate)
    assert 6 in h.core.statistics().bands


def test_new_band_while_another_retires(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 8): band changes never break flow creation elsewhere."""
    h = make()
    h.submit("a", 3)
    h.core.reconcile(set())
    h.submit("b", 11)
    h.submit("a", 3)
    stats = h.core.statistics()
    assert stats.bands[3].queued_requests == 2 and stats.bands[11].queued_requests == 1


def test_collection_at_the_exact_deadline_despite_float_rounding(
    make: Callable[..., Harness],
) -> None:
    """At `next_deadline()` the flow is collected, even where now - since rounds below the
    timeout (else the shell's timer re-arms for the same instant and spins)."""
    h = make(sg.FlowControlConfig(flow_idle_timeout=3.0, band_idle_timeout=5.0), saturated=False)
    h.release(h.submit("c", now=3.991458), now=3.991458)
    due = h.core.next_deadline()
    assert due is not None and due - 3.991458 < 3.0  # the rounding this is about
    h.core.expire(due, h.gate)
    assert not h.core.statistics().flows
