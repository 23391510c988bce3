"""Property-based test of the whole controller (core and asyncio shell) in virtual time.

Random events: waiting and nowait submissions, releases, cancellations, detectors that
flip between saturated and free (and ceilings via their load), reconfiguration,
reconciliation, usage reports (absurd ones included), time passing, shutdown. After each
event the loop runs until it is quiet, and the invariants below must hold.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import hypothesis.strategies as st
import looptime
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sluicegate as sg
from sluicegate._core._policies import GlobalStrict, RoundRobin, TokenFair
from sluicegate._core._queues import FifoQueue, HeapQueue
from sluicegate._core._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate._core._ticket import Ticket

SLACK = 64


class FlippingDetector:
    """A concurrency limit with a load floor (for ceilings) and a saturation switch.

    It records any dispatch made while it said no, for the bands' ceilings included.
    """

    recheck_interval: float | None = None

    def __init__(self) -> None:
        self.limit = 1
        self.load = 0.0
        self.saturated = False
        self.endpoints = True
        self.in_flight = 0
        self.violations: list[str] = []
        self._listener: Callable[[], None] | None = None

    def is_saturated(self) -> bool:
        return self.saturated or self.in_flight >= self.limit

    def has_endpoints(self) -> bool:
        return self.endpoints

    def utilization(self) -> float:
        return max(self.load, self.in_flight / self.limit if self.limit else 1.0)

    def on_dispatch(self, ticket: Ticket) -> None:
        ceiling = ticket._flow.band.config.max_utilization
        if not self.endpoints or self.is_saturated():
            self.violations.append(f"{ticket!r} dispatched while saturated")
        elif ceiling < 1.0 and not self.utilization() < ceiling:
            self.violations.append(f"{ticket!r} dispatched above its band's ceiling")
        self.in_flight += 1

    def on_release(self, ticket: Ticket) -> None:
        self.in_flight -= 1

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        self._listener = listener

    def notify(self) -> None:
        if self._listener is not None:
            self._listener()


def _band(fairness: str, **kwargs: Any) -> sg.BandConfig:
    return sg.BandConfig(fairness=fairness, **kwargs)


CONFIGS = [
    sg.FlowControlConfig(
        default_ttl=None,
        no_endpoint_ttl=4.0,
        max_requests=12,
        default_band=_band("global-strict", max_requests=5, max_bytes=150),
        negative_band=_band("round-robin", ordering="edf", max_requests=3, max_utilization=0.5),
        bands={
            1: _band("token-fair", ordering="slo-deadline", max_requests=None),
            5: _band("global-strict", max_requests=0),
        },
        flow_idle_timeout=3.0,
        band_idle_timeout=5.0,
    ),
    sg.FlowControlConfig(
        default_ttl=6.0,
        default_band=_band("token-fair", max_requests=4, max_utilization=0.75),
        negative_band=_band("global-strict", ordering="edf", max_utilization=0.5),
        bands={5: _band("round-robin", max_requests=2)},
        flow_idle_timeout=2.0,
        band_idle_timeout=2.0,
    ),
]
PRIORITIES = [-2, -1, 0, 1, 2, 5]


class ControllerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = looptime.new_event_loop(start=0.0)
        self.gate = FlippingDetector()
        self.ctl = sg.FlowController(CONFIGS[0], saturation=self.gate)
        self.tickets: list[Ticket] = []
        self.tasks: dict[int, asyncio.Task[Ticket]] = {}
        self.held: list[Ticket] = []  # handed over to the caller, not yet released
        self.outcomes: dict[int, sg.Outcome] = {}
        self.rejected = 0
        submit = self.ctl._core.submit

        def spy(*args: Any, **kwargs: Any) -> Ticket:
            ticket = submit(*args, **kwargs)
            self.tickets.append(ticket)
            return ticket

        self.ctl._core.submit = spy  # type: ignore[method-assign]  # a spy on the core
        on_timer = self.ctl._on_timer
        self.timer_runs = 0

        def counted() -> None:
            self.timer_runs += 1
            if self.timer_runs > 1000:  # a timer re-armed for the moment it fired: a spin
                self.loop.stop()
            on_timer()

        self.ctl._on_timer = counted  # type: ignore[method-assign]  # a spy on the shell
        self.run(self.ctl.__aenter__())

    def teardown(self) -> None:
        self.run(self.ctl.aclose())
        for ticket in self.held:
            ticket.release()
        for task in self.tasks.values():
            task.cancel()
        self.settle()
        self.loop.close()

    # -- driving the loop -------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        """Run the loop until every ready callback has run (no time passes)."""
        for _ in range(6):
            self.run(asyncio.sleep(0))
        for seq, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[seq]
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                self.held.append(task.result())
            else:
                assert isinstance(error, sg.EvictedError), error

    def may_start(self, priority: int) -> bool:
        """Whether a request at `priority` may be dispatched on arrival: nothing waits at
        its priority or above, and the detector lets its band dispatch."""
        core = self.ctl._core
        if core.closed or any(
            b.queued_requests for b in core.registry.levels if b.priority >= priority
        ):
            return False
        band = core.registry.bands.get(priority)
        config = band.config if band is not None else core.config.template_for(priority)
        gate = self.gate
        if not gate.endpoints or gate.is_saturated():
            return False
        return config.max_utilization >= 1.0 or gate.utilization() < config.max_utilization

    # -- rules ------------------------------------------------------------------------

    @rule(
        fid=st.sampled_from("abc"),
        priority=st.sampled_from(PRIORITIES),
        size=st.integers(0, 60),
        ttl=st.none() | st.floats(0.5, 6.0),
        slo=st.none() | st.floats(0.0, 3.0),
        output_tokens=st.none() | st.integers(0, 2000),
    )
    def submit(
        self,
        fid: str,
        priority: int,
        size: int,
        ttl: float | None,
        slo: float | None,
        output_tokens: int | None,
    ) -> None:
        before = len(self.tickets)
        immediate = self.may_start(priority)
        task = self.loop.create_task(
            self.ctl.enqueue_and_wait(
                sg.FlowKey(fid, priority), size=size, ttl=ttl, slo=slo, output_tokens=output_tokens
            )
        )
        self.settle()
        if len(self.tickets) > before:
            ticket = self.tickets[-1]
            self.tasks[ticket.seq] = task
            if immediate:
                assert ticket.state is not State.QUEUED, "queued although it could start"
            self.settle()
        else:
            assert not immediate, "refused although it could start at once"
            assert task.done() and isinstance(task.exception(), sg.RejectedError)
            self.rejected += 1

    @rule(fid=st.sampled_from("abcd"), priority=st.sampled_from(PRIORITIES))
    def submit_nowait(self, fid: str, priority: int) -> None:
        try:
            ticket = self.ctl.enqueue_nowait(sg.FlowKey(fid, priority), output_tokens=50)
        except sg.WouldBlock:
            return
        except sg.RejectedError:
            self.rejected += 1
            return
        assert ticket.state is State.DISPATCHED, "enqueue_nowait returned a waiting request"
        self.held.append(ticket)
        self.settle()

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if self.held:
            ticket = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
            ticket.release()
            self.settle()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.tasks:
            seq = data.draw(st.sampled_from(sorted(self.tasks)))
            self.tasks[seq].cancel()
            self.settle()

    @rule(
        limit=st.integers(0, 4),
        load=st.sampled_from([0.0, 0.4, 0.6, 0.8]),
        saturated=st.booleans(),
    )
    def flip_detector(self, limit: int, load: float, saturated: bool) -> None:
        self.gate.limit, self.gate.load, self.gate.saturated = limit, load, saturated
        self.gate.notify()
        self.settle()

    @rule(endpoints=st.booleans())
    def set_endpoints(self, endpoints: bool) -> None:
        self.gate.endpoints = endpoints
        self.gate.notify()
        self.settle()

    @rule(dt=st.floats(0.01, 4.0))
    def advance(self, dt: float) -> None:
        self.timer_runs = 0
        self.run(asyncio.sleep(dt))
        self.settle()

    @rule(index=st.integers(0, len(CONFIGS) - 1))
    def reconfigure(self, index: int) -> None:
        self.ctl.reconfigure(CONFIGS[index])
        self.settle()

    @rule(desired=st.sets(st.sampled_from([-2, 0, 2, 3, 7])))
    def reconcile(self, desired: set[int]) -> None:
        self.ctl.reconcile_priorities(desired)
        self.settle()

    @rule(
        data=st.data(),
        input_tokens=st.none() | st.integers(0, 5000) | st.just(2**63 - 1),
        output_tokens=st.none() | st.integers(0, 5000) | st.just(10**30),
        final=st.booleans(),
    )
    def report_usage(
        self, data: st.DataObject, input_tokens: int | None, output_tokens: int | None, final: bool
    ) -> None:
        served = [t for t in self.tickets if t.state in (State.DISPATCHED, State.RELEASED)]
        if served:
            ticket = data.draw(st.sampled_from(served))
            ticket.record_usage(input_tokens=input_tokens, output_tokens=output_tokens, final=final)
            self.settle()

    @precondition(lambda self: not self.ctl._core.closed)
    @rule()
    def close(self) -> None:
        self.run(self.ctl.aclose())
        self.settle()

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def no_dispatch_past_the_detector(self) -> None:
        assert not self.gate.violations, self.gate.violations

    @invariant()
    def each_ticket_is_finalised_once(self) -> None:
        for t in self.tickets:
            if t.state is State.QUEUED:
                assert t.outcome is None
                continue
            assert t.outcome is not None
            first = self.outcomes.setdefault(t.seq, t.outcome)
            if first is not t.outcome:
                # The one change allowed: a dispatch nobody received, revoked.
                assert (first, t.outcome) == (sg.Outcome.DISPATCHED, sg.Outcome.EVICTED_CANCELLED)
                assert not t._handed_over
                self.outcomes[t.seq] = t.outcome

    @invariant()
    def no_waiter_is_left_pending(self) -> None:
        for t in self.tickets:
            waiter = t._waiter
            if t.state is not State.QUEUED and waiter is not None:
                assert waiter.done(), f"{t!r} is terminal but its waiter is pending"
            if t.state in (State.DISPATCHED, State.RELEASED) and t.outcome is sg.Outcome.DISPATCHED:
                assert t._handed_over, f"{t!r} dispatched but never handed to its caller"

    @invariant()
    def in_flight_is_what_was_handed_out(self) -> None:
        core = self.ctl._core
        in_flight = [t for t in self.tickets if t.state is State.DISPATCHED]
        assert core.in_flight == len(in_flight) == self.gate.in_flight == len(self.held)
        stats = self.ctl.statistics()
        assert stats.submitted == stats.dispatched + stats.rejected + stats.evicted + (
            stats.queued_requests
        )
        assert stats.rejected == self.rejected

    @invariant()
    def nothing_dispatchable_is_left_waiting(self) -> None:
        core = self.ctl._core
        if core.closed:
            assert core.queued_requests == 0
            return
        for band in core.registry.levels:
            if band.queued_requests:
                # The pass stops at the first band that waits; that band must be blocked.
                assert not core.can_dispatch(self.gate, band), f"band {band.priority} stranded"
                break

    @invariant()
    def collection_and_expiry_are_scheduled(self) -> None:
        core = self.ctl._core
        due = core.next_deadline()
        if due is not None and not core.closed:
            assert self.ctl._timer is not None and self.ctl._timer_at <= due + 1e-9

    @invariant()
    def internal_state_is_bounded_by_live_entries(self) -> None:
        core = self.ctl._core
        registry = core.registry
        assert len(core._deadlines) <= 4 * core.queued_requests + SLACK + 2
        for band in registry.levels:
            backlogged = [f for f in band.flows.values() if len(f.queue)]
            fairness = band.fairness
            if isinstance(fairness, GlobalStrict | TokenFair):
                assert len(fairness._heap) <= 2 * len(backlogged) + SLACK
            elif isinstance(fairness, RoundRobin):
                assert len(fairness._ring) <= 2 * len(backlogged) + SLACK
            for flow in band.flows.values():
                queue = flow.queue
                if isinstance(queue, FifoQueue):
                    assert len(queue._items) <= 2 * len(queue) + SLACK
                elif isinstance(queue, HeapQueue):
                    assert len(queue._heap) <= 2 * len(queue) + SLACK
                assert math.isfinite(flow.fair_counter) and flow.fair_counter < 1e12
                # A flow is busy, or idle on its collection clock: none is forgotten.
                assert flow.in_flight or len(queue) or flow in registry._idle_flows
            if not band.flows and not registry.protected(band):
                assert band in registry._idle_bands, f"band {band.priority} is never collected"
        assert len(registry._idle_flows) <= sum(len(b.flows) for b in registry.levels)

    @invariant()
    def rejected_requests_leave_no_flows(self) -> None:
        admitted = {(t.key.id, t.priority) for t in self.tickets}
        for band in self.ctl._core.registry.levels:
            for fid in band.flows:
                assert (fid, band.priority) in admitted


TestController = ControllerMachine.TestCase
TestController.settings = settings(max_examples=120, stateful_step_count=60, deadline=None)
