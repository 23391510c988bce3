"""Plugin failures: the core isolates, counts and reports them; it never logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import sluicegate as sg
from sluicegate._core._scheduler import Scheduler
from sluicegate.testing import ManualDetector

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate._core._policies import FairnessPolicy
    from sluicegate._core._registry import Flow
    from sluicegate._core._ticket import Ticket


class Boom(Exception):
    pass


class FailingDetector:
    """A detector, saturated or not as set, whose `failing` method raises `Boom`."""

    recheck_interval: float | None = None

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.saturated = False
        self.in_flight = 0

    def _maybe_fail(self, name: str) -> None:
        if name == self.failing:
            raise Boom(name)

    def is_saturated(self) -> bool:
        self._maybe_fail("is_saturated")
        return self.saturated

    def has_endpoints(self) -> bool:
        self._maybe_fail("has_endpoints")
        return True

    def utilization(self) -> float:
        return 1.0 if self.saturated else 0.0

    def on_dispatch(self, ticket: Ticket, /) -> None:
        self._maybe_fail("on_dispatch")
        self.in_flight += 1

    def on_release(self, ticket: Ticket, /) -> None:
        self._maybe_fail("on_release")
        self.in_flight -= 1

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        pass


class FailingPolicy:
    """A fairness policy whose `select` raises `Boom` (or, once told, finds nothing)."""

    name: ClassVar[str] = "failing"

    def __init__(self, inner: FairnessPolicy) -> None:
        self.inner = inner
        self.raises = True

    def head_changed(self, flow: Flow, /) -> None:
        self.inner.head_changed(flow)

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None:
        self.inner.dispatched(flow, ticket)

    def charge(self, flow: Flow, service: float, /) -> None:
        self.inner.charge(flow, service)

    def select(self) -> Flow | None:
        if self.raises:
            raise Boom("select")
        return None


Reports = list[tuple[str, BaseException | None]]


def _scheduler(config: sg.FlowControlConfig | None = None) -> tuple[Scheduler, Reports]:
    reports: Reports = []
    core = Scheduler(config or sg.FlowControlConfig(), on_fault=lambda m, e: reports.append((m, e)))
    return core, reports


def test_a_failing_gate_counts_as_saturated_and_is_reported() -> None:
    """is_saturated raising: nothing dispatches, `saturated` is set, the fault reported."""
    core, reports = _scheduler()
    gate = FailingDetector("is_saturated")
    ticket = core.submit(sg.FlowKey("a"), 0, None, None, 0.0, gate)
    assert ticket.state.name == "QUEUED"
    assert core.dispatch(1.0, gate) == []
    assert core.blocked and core.saturated
    assert core.faults == len(reports) >= 2
    message, error = reports[-1]
    assert "saturation detector failed" in message and isinstance(error, Boom)


def test_a_failing_dispatch_hook_still_dispatches() -> None:
    """on_dispatch raising: the request is dispatched anyway, the fault counted once."""
    core, reports = _scheduler()
    gate = FailingDetector("on_dispatch")
    ticket = core.submit(sg.FlowKey("a"), 0, None, None, 0.0, gate)
    assert ticket.outcome is sg.Outcome.DISPATCHED
    assert core.faults == 1 and "on_dispatch" in reports[0][0]
    gate.failing = "on_release"
    assert core.release(ticket, 1.0, gate)
    assert core.in_flight == 0 and core.faults == 2 and "on_release" in reports[1][0]


def test_a_failing_endpoint_check_admits() -> None:
    """has_endpoints raising at a no_endpoint_ttl=0 admission: admitted, not refused."""
    core, reports = _scheduler(sg.FlowControlConfig(no_endpoint_ttl=0))
    gate = FailingDetector("has_endpoints")
    gate.saturated = True
    ticket = core.submit(sg.FlowKey("a"), 0, None, None, 0.0, gate)
    assert ticket.state.name == "QUEUED"
    assert core.faults >= 1 and all(isinstance(e, Boom) for _, e in reports)


def test_a_failing_fairness_policy_skips_its_band_for_the_pass() -> None:
    """select raising (or finding nothing) skips the band; lower bands still dispatch."""
    core, reports = _scheduler()
    gate = ManualDetector(saturated=True)
    high = core.submit(sg.FlowKey("h", 5), 0, None, None, 0.0, gate)
    low = core.submit(sg.FlowKey("l", 0), 0, None, None, 0.0, gate)
    band = core.registry.bands[5]
    band.fairness = policy = FailingPolicy(band.fairness)
    gate.saturated = False
    assert core.dispatch(1.0, gate) == [low]
    assert high.state.name == "QUEUED"
    assert core.faults == 1 and isinstance(reports[0][1], Boom)
    policy.raises = False  # now it finds no flow although one is backlogged
    assert core.dispatch(2.0, gate) == []
    assert core.faults == 2 and reports[1] == ("fairness policy of band 5 found no flow", None)


def test_without_a_sink_faults_are_only_counted() -> None:
    """No sink: the failure is isolated and counted, nothing else happens."""
    core = Scheduler(sg.FlowControlConfig())
    gate = FailingDetector("on_dispatch")
    core.submit(sg.FlowKey("a"), 0, None, None, 0.0, gate)
    assert core.faults == 1 and core.in_flight == 1
