"""Internal heaps and maps stay bounded by what is live, whatever the event pattern.

These look at private sizes on purpose: the leaks they guard against are invisible in
`statistics()` until memory runs out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sluicegate as sg
from sluicegate._core._policies import GlobalStrict, TokenFair

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness

SLACK = 64


def test_global_strict_heap_stays_bounded_while_saturated(make: Callable[..., Harness]) -> None:
    """Expiring heads while no pass can run does not grow the flow-head heap."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=None)))
    for i in range(20):
        h.submit(f"f{i}", ttl=1e9, now=0.0)
    for i in range(5000):
        h.submit("churn", ttl=5.0, now=float(i))
        h.core.expire(float(i), h.gate)
    fairness = h.core.registry.bands[0].fairness
    assert isinstance(fairness, GlobalStrict)
    assert len(fairness._heap) <= 2 * 21 + SLACK


def test_global_strict_heap_stays_bounded_under_cancellation(
    make: Callable[..., Harness],
) -> None:
    """Cancelling heads one by one (clients giving up) does not grow the heap."""
    h = make(sg.FlowControlConfig(default_ttl=None))
    waiting = [h.submit("a", now=0.0), h.submit("b", now=0.0)]
    for i in range(5000):
        waiting.append(h.submit("a", now=float(i)))
        assert h.core.cancel(waiting.pop(0), now=float(i))  # the head: its flow's head moves
    fairness = h.core.registry.bands[0].fairness
    assert isinstance(fairness, GlobalStrict)
    assert len(fairness._heap) <= 2 + SLACK


def test_token_fair_heap_stays_bounded_under_usage_reports(make: Callable[..., Harness]) -> None:
    """Running usage reports of a backlogged flow do not grow the counter heap."""
    band = sg.BandConfig(fairness="token-fair", max_requests=None)
    h = make(sg.FlowControlConfig(default_ttl=None, default_band=band))
    h.submit("a")
    h.submit("a")
    ticket = h.dispatch_one()
    assert ticket is not None
    for n in range(5000):
        h.core.record_usage(ticket, None, n, 0.0, final=False)
    fairness = h.core.registry.bands[0].fairness
    assert isinstance(fairness, TokenFair)
    assert len(fairness._heap) <= 2 + SLACK


def test_timer_heap_shrinks_after_mass_cancellation(make: Callable[..., Harness]) -> None:
    """Timer entries of cancelled requests do not outlive them by more than a constant."""
    h = make(sg.FlowControlConfig(default_ttl=1000.0))
    tickets = [h.submit(f"t{i}") for i in range(4000)]
    for t in tickets:
        h.core.cancel(t, now=1.0)
    assert len(h.core._deadlines) <= SLACK


def test_static_band_removed_by_reconfigure_is_collected(make: Callable[..., Harness]) -> None:
    """A band no longer static is dynamic: collected once idle, even without reconcile."""
    config = sg.FlowControlConfig(
        bands={5: sg.BandConfig()}, flow_idle_timeout=10.0, band_idle_timeout=20.0
    )
    h = make(config, saturated=False)
    h.release(h.submit("a", 5, now=0.0), now=0.0)
    h.core.expire(50.0, h.gate)
    assert 5 in h.core.statistics().bands  # static: kept
    h.core.reconfigure(
        sg.FlowControlConfig(flow_idle_timeout=10.0, band_idle_timeout=20.0), now=50.0
    )
    assert h.core.next_deadline() == 70.0
    h.core.expire(70.0, h.gate)
    assert 5 not in h.core.statistics().bands


def test_demoted_band_with_flows_is_collected_after_them(make: Callable[..., Harness]) -> None:
    """Demoted while a flow is idle: the band goes band_idle_timeout after its last request."""
    config = sg.FlowControlConfig(
        bands={5: sg.BandConfig()}, flow_idle_timeout=10.0, band_idle_timeout=20.0
    )
    h = make(config, saturated=False)
    h.release(h.submit("a", 5, now=0.0), now=1.0)
    h.core.reconfigure(
        sg.FlowControlConfig(flow_idle_timeout=10.0, band_idle_timeout=20.0), now=2.0
    )
    h.core.expire(11.0, h.gate)
    assert 5 in h.core.statistics().bands and not h.core.statistics().flows
    h.core.expire(21.0, h.gate)
    assert 5 not in h.core.statistics().bands
