"""Property-based test: the scheduler against a simple model, under random events.

Events include nowait submissions, loads crossing band ceilings, cancellation,
reconfiguration (policies change, static bands come and go), reconciliation and usage
reports; besides the counters, every internal heap, ring and map must stay bounded by a
constant times its live entries, and no flow or band may be left where nothing collects it.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sluicegate as sg
from sluicegate._core._policies import GlobalStrict, RoundRobin, TokenFair
from sluicegate._core._scheduler import Scheduler
from sluicegate._core._ticket import State, Ticket


class LimitGate:
    """A concurrency-limit gate whose limit the test changes."""

    recheck_interval: float | None = None

    def __init__(self) -> None:
        self.limit = 0
        self.load = 0.0
        self.in_flight = 0
        self.endpoints = True
        self.violations: list[str] = []

    def is_saturated(self) -> bool:
        return self.in_flight >= self.limit

    def has_endpoints(self) -> bool:
        return self.endpoints

    def utilization(self) -> float:
        return max(self.load, self.in_flight / self.limit if self.limit else 1.0)

    def on_dispatch(self, ticket: Ticket) -> None:
        ceiling = ticket._flow.band.config.max_utilization
        if ceiling < 1 and not self.utilization() < ceiling:
            self.violations.append(f"{ticket!r} dispatched above its band's ceiling")
        self.in_flight += 1

    def on_release(self, ticket: Ticket) -> None:
        self.in_flight -= 1

    def set_listener(self, listener: object) -> None:
        pass


SLACK = 64

CONFIG = sg.FlowControlConfig(
    default_ttl=None,
    no_endpoint_ttl=4.0,
    max_requests=12,
    max_bytes=400,
    default_band=sg.BandConfig(max_requests=5, max_bytes=150),
    negative_band=sg.BandConfig(
        ordering="edf", fairness="round-robin", max_requests=3, max_utilization=0.5
    ),
    bands={1: sg.BandConfig(ordering="slo-deadline", fairness="round-robin", max_requests=None)},
    flow_idle_timeout=3.0,
    band_idle_timeout=5.0,
)
#: The same limits (lowered ones would leave queues over them, by design), other
#: policies and ceilings, one more static band, shorter idle timeouts.
CONFIG2 = sg.FlowControlConfig(
    default_ttl=None,
    no_endpoint_ttl=4.0,
    max_requests=12,
    max_bytes=400,
    default_band=sg.BandConfig(
        fairness="token-fair", max_requests=5, max_bytes=150, max_utilization=0.75
    ),
    negative_band=sg.BandConfig(ordering="edf", fairness="global-strict", max_requests=3),
    bands={
        1: sg.BandConfig(ordering="slo-deadline", fairness="token-fair", max_requests=None),
        3: sg.BandConfig(fairness="round-robin", max_requests=5, max_bytes=150),
    },
    flow_idle_timeout=2.0,
    band_idle_timeout=2.0,
)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Scheduler(CONFIG)
        self.gate = LimitGate()
        self.now = 0.0
        self.tickets: list[Ticket] = []
        self.first_outcome: dict[int, sg.Outcome] = {}
        self.rejections = 0

    @rule(
        fid=st.sampled_from("ab"),
        priority=st.sampled_from([-2, -1, 0, 1, 2, 3]),
        size=st.integers(0, 80),
        ttl=st.none() | st.floats(0.5, 6.0),
        slo=st.none() | st.floats(0.0, 3.0),
        preemptible=st.booleans(),
    )
    def submit(
        self,
        fid: str,
        priority: int,
        size: int,
        ttl: float | None,
        slo: float | None,
        preemptible: bool,
    ) -> None:
        key, gate = sg.FlowKey(fid, priority), self.gate
        try:
            t = self.core.submit(key, size, ttl, slo, self.now, gate, preemptible=preemptible)
        except sg.RejectedError:
            self.rejections += 1
            assert not self.core.take_displaced(), "evicted for an arrival that was refused"
            return
        self.tickets.append(t)
        self._check_displaced(self.core.take_displaced(), priority)

    def _check_displaced(self, displaced: list[Ticket], priority: int) -> None:
        """Victims are strictly lower, and the lowest band's newest go first."""
        for victim in displaced:
            assert victim.priority < priority, "displaced by a request of lower priority"
            assert victim.outcome is sg.Outcome.EVICTED_DISPLACED
            assert victim.state is State.FINISHED
        if displaced:
            worst = max((v.priority, -v.seq) for v in displaced)
            for t in self.tickets:
                if t.state is State.QUEUED and t.priority < priority:
                    assert (t.priority, -t.seq) > worst, "a better victim was kept"

    @rule(fid=st.sampled_from("abc"), priority=st.sampled_from([-1, 0, 1, 3]))
    def submit_nowait(self, fid: str, priority: int) -> None:
        try:
            t = self.core.submit(
                sg.FlowKey(fid, priority), 10, None, None, self.now, self.gate, nowait=True
            )
        except sg.WouldBlock:
            return
        except sg.RejectedError:
            self.rejections += 1
            return
        assert t.state is State.DISPATCHED, "nowait queued a request"
        self.tickets.append(t)

    @rule(limit=st.integers(0, 3), load=st.sampled_from([0.0, 0.6, 0.9]))
    def set_limit(self, limit: int, load: float) -> None:
        self.gate.limit = limit
        self.gate.load = load

    @rule(second=st.booleans())
    def reconfigure(self, second: bool) -> None:
        self.core.reconfigure(CONFIG2 if second else CONFIG, self.now)

    @rule(
        data=st.data(),
        tokens=st.none() | st.integers(0, 5000) | st.just(2**63 - 1),
        final=st.booleans(),
    )
    def report_usage(self, data: st.DataObject, tokens: int | None, final: bool) -> None:
        served = [t for t in self.tickets if t.state in (State.DISPATCHED, State.RELEASED)]
        if served:
            t = data.draw(st.sampled_from(served))
            assert self.core.record_usage(t, tokens, tokens, self.now, final=final)

    @rule(endpoints=st.booleans())
    def set_endpoints(self, endpoints: bool) -> None:
        was = self.gate.endpoints
        self.gate.endpoints = endpoints
        if was and not endpoints:
            self.core.endpoints_lost(self.now)

    @rule()
    def dispatch(self) -> None:
        queued_before = {t.seq: t.priority for t in self.tickets if t.state is State.QUEUED}
        out = self.core.dispatch(self.now, self.gate)
        assert all(t.state is State.DISPATCHED for t in out)
        if out:
            assert self.gate.in_flight <= self.gate.limit, "dispatched past saturation"
        remaining = [t.priority for t in self.tickets if t.state is State.QUEUED]
        if remaining:
            # Strict priority: nothing dispatched from below a band that still waits.
            assert self.core.blocked
            assert all(t.priority >= max(remaining) for t in out)
        assert all(t.seq in queued_before for t in out)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        in_flight = [t for t in self.tickets if t.state is State.DISPATCHED]
        if in_flight:
            t = data.draw(st.sampled_from(in_flight))
            assert self.core.release(t, self.now, self.gate)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        queued = [t for t in self.tickets if t.state is State.QUEUED]
        if queued:
            assert self.core.cancel(data.draw(st.sampled_from(queued)), self.now)

    @rule(dt=st.floats(0.0, 4.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.core.expire(self.now, self.gate)
        for t in self.tickets:
            if t.state is State.QUEUED and t.expires_at is not None:
                assert t.expires_at > self.now, "a due TTL was not expired"

    @rule(desired=st.sets(st.sampled_from([-2, 0, 2, 3, 7])))
    def reconcile(self, desired: set[int]) -> None:
        self.core.reconcile(desired)

    @precondition(lambda self: not self.core.closed)
    @rule()
    def close(self) -> None:
        evicted = self.core.close(self.now)
        assert all(t.outcome is sg.Outcome.EVICTED_OTHER for t in evicted)

    @invariant()
    def every_ticket_has_one_outcome(self) -> None:
        for t in self.tickets:
            if t.state is State.QUEUED:
                assert t.outcome is None
            else:
                assert t.outcome is not None
                assert self.first_outcome.setdefault(t.seq, t.outcome) is t.outcome

    @invariant()
    def counters_conserve(self) -> None:
        s = self.core.statistics()
        assert s.submitted == s.dispatched + s.rejected + s.evicted + s.queued_requests
        assert s.rejected == self.rejections
        queued = [t for t in self.tickets if t.state is State.QUEUED]
        in_flight = [t for t in self.tickets if t.state is State.DISPATCHED]
        assert s.queued_requests == len(queued)
        assert s.queued_bytes == sum(t.size for t in queued)
        assert s.in_flight == len(in_flight) == self.gate.in_flight
        assert sum(b.queued_requests for b in s.bands.values()) == s.queued_requests
        assert sum(f.queued_requests for f in s.flows.values()) == s.queued_requests
        assert sum(f.in_flight for f in s.flows.values()) == s.in_flight
        core = self.core
        reclaimable = sum(b.reclaimable for b in core.registry.bands.values())
        assert reclaimable == core.preemptible_in_flight <= s.in_flight

    @invariant()
    def limits_never_exceeded(self) -> None:
        s = self.core.statistics()
        assert s.queued_requests <= 12 and s.queued_bytes <= 400
        for band in s.bands.values():
            if band.max_requests is not None:
                assert band.queued_requests <= band.max_requests
            if band.max_bytes is not None:
                assert band.queued_bytes <= band.max_bytes

    @invariant()
    def nothing_is_orphaned(self) -> None:
        s = self.core.statistics()
        for t in self.tickets:
            if t.state in (State.QUEUED, State.DISPATCHED):
                assert t.priority in s.bands
                assert sg.FlowKey(t.key.id, t.priority) in s.flows

    @invariant()
    def protected_bands_exist(self) -> None:
        bands = self.core.statistics().bands
        assert 0 in bands and set(self.core.config.bands) <= set(bands)
        assert self.core.registry.desired <= set(bands)

    @invariant()
    def no_dispatch_above_a_ceiling(self) -> None:
        assert not self.gate.violations, self.gate.violations

    @invariant()
    def internal_state_is_bounded_and_collectable(self) -> None:
        core = self.core
        registry = core.registry
        assert len(core._deadlines) <= 4 * core.queued_requests + SLACK + 2
        for band in registry.levels:
            backlogged = sum(1 for f in band.flows.values() if len(f.queue))
            fairness = band.fairness
            if isinstance(fairness, GlobalStrict | TokenFair):
                assert len(fairness._heap) <= 2 * backlogged + SLACK
            elif isinstance(fairness, RoundRobin):
                assert len(fairness._ring) <= 2 * backlogged + SLACK
            for flow in band.flows.values():
                assert flow.in_flight or len(flow.queue) or flow in registry._idle_flows
                assert flow.fair_counter < 1e12
            if not band.flows and not registry.protected(band):
                assert band in registry._idle_bands or band.retiring


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)
