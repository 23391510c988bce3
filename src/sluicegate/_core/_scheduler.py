"""The flow-control decision step: admission, dispatch, expiry, release.

Theory of operation
-------------------
The scheduler is synchronous and never reads a clock: every method that depends on
time takes `now`. The asyncio shell (`FlowController`) calls it on each event
(submission, release, cancellation, a timer, a saturation change) and carries out
what it returns.

A ticket leaves the queue exactly once, by exactly one of: `dispatch` (Dispatched),
`expire` (EvictedTTL / EvictedNoEndpoints), `cancel` (EvictedCancelled), `close`
(EvictedOther), or a higher-priority `submit` that displaces it (EvictedDisplaced).
Each of them checks `state is QUEUED` first, so two events in the same loop iteration
cannot both finalise a ticket, and capacity is released the moment the ticket leaves:
there are no zombies.

Dispatch walks the bands from the highest priority down. Inside a band the fairness
policy picks a flow and the flow's queue (ordered by the band's ordering policy) gives
the ticket. Before each dispatch the gate (saturation detector) is asked; once it says
saturated, the pass stops: no lower band jumps ahead of a blocked higher one.

Plugins (the gate, fairness policies) may fail: the step isolates each failure (a
failing gate counts as saturated, a failing policy skips its band for the pass),
counts it in `faults` and reports it to `on_fault`. The core never logs; the shell does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias, final

from .._errors import (
    ControllerClosedError,
    DeadlineUnreachableError,
    NoEndpointsError,
    QueueFullError,
    WouldBlock,
)
from .._types import ControllerStatistics, FlowKey, FlowStatistics, Outcome
from ._admission import (
    displacement_victims,
    early_rejection,
    estimate_wait,
    limit_refusal,
    shortfall,
)
from ._gate import SlotGate
from ._headroom import DemandHeadroom
from ._registry import Registry
from ._reservations import Reservations
from ._statistics import band_statistics, flow_snapshot
from ._tenants import Tenants
from ._ticket import State, Ticket
from ._timers import TTL, Deadlines
from ._tokens import MAX_REQUEST_TOKENS, charge, estimate, learn_output, record_usage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._config import FlowControlConfig
    from ._registry import Band, Flow
    from ._reservations import Claim
    from ._saturation import SaturationDetector

    #: Receives each plugin failure: a message and the exception (None if none was raised).
    FaultSink: TypeAlias = Callable[[str, BaseException | None], None]

__all__ = ["MAX_REQUEST_TOKENS", "Scheduler"]


@final
class Scheduler:
    """All flow-control state, and the synchronous steps that change it.

    Args:
        config: the configuration.
        on_fault: told of each plugin failure (the shell logs it); None = only counted.
            Called in the middle of a step: it must not raise or call back into the core.
    """

    def __init__(self, config: FlowControlConfig, on_fault: FaultSink | None = None) -> None:
        self.registry = Registry(config)
        #: Per-tenant ceilings (`_tenants`); empty when none are configured.
        self.tenants = Tenants(config.tenants)
        self.submitted = 0
        self.queued_requests = 0
        self.queued_bytes = 0
        self.in_flight = 0
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.closed = False
        #: True when the last pass stopped with work queued (saturated, or at a ceiling).
        self.blocked = False
        #: True when it stopped because the gate is saturated: no band can dispatch
        #: until the gate changes (a band's ceiling stops only that band and below).
        self.saturated = False
        #: Plugin failures (saturation detector, fairness policy) isolated so far.
        self.faults = 0
        self._on_fault = on_fault
        self._seq = 0
        #: Tickets taken back from flight and queued again (`requeue`).
        self.requeued = 0
        #: Free slots kept for higher bands, sized to their demand (`_headroom.py`).
        self.headroom = DemandHeadroom()
        #: The gate's answers with the bands' ceilings and headroom on top (`_gate.py`).
        self.slot_gate = SlotGate(self.registry, self.headroom, self._fault)
        #: Dispatched preemptible tickets: slots the top band gets back at once.
        self.preemptible_in_flight = 0
        #: Queued preemptible tickets (they may fill the top band's remembered reserve).
        self.preemptible_queued = 0
        #: Tickets evicted by displacement in the last `submit`, for the shell to fail
        #: (`take_displaced`).
        self._displaced: list[Ticket] = []
        #: The TTL and no-endpoint deadlines of queued tickets.
        self._deadlines = Deadlines()
        #: Places promised with Retry-After in full bands (`_reservations.py`).
        self.reservations = Reservations(config)

    @property
    def config(self) -> FlowControlConfig:
        return self.registry.config

    def _fault(self, message: str, error: BaseException | None = None) -> None:
        """Count a plugin failure and report it (the core never logs)."""
        self.faults += 1
        if self._on_fault is not None:
            self._on_fault(message, error)

    # -- admission -----------------------------------------------------------------

    def reject_closed(self) -> ControllerClosedError:
        """Count a submission refused because the controller is not running."""
        self.submitted += 1
        self.outcomes[Outcome.REJECTED_OTHER] += 1
        return ControllerClosedError("the flow controller is not running")

    def submit(
        self,
        key: FlowKey,
        size: int,
        ttl: float | None,
        slo: float | None,
        now: float,
        gate: SaturationDetector,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        *,
        nowait: bool = False,
        claim: Claim = None,
        preemptible: bool = False,
    ) -> Ticket:
        """Admit a request: dispatch it at once, queue it, or raise `RejectedError`.

        A rejected request leaves no state behind: its flow is created only once it is
        admitted, and a dynamic band first seen on it is dropped again.

        Args:
            ttl: seconds it may wait; None = the configured default; inf = forever.
            slo: seconds from now to its SLO deadline (for `slo-deadline` ordering).
            input_tokens: estimated prompt tokens; None = size / 4.
            output_tokens: estimated output tokens (e.g. max_tokens); None = the flow's
                recent average of actual output.
            nowait: dispatch at once or raise `WouldBlock` (counting nothing); never queue.
            claim: names the request for a promise made with Retry-After
                (`_reservations.py`); None: any request of its flow redeems one.
            preemptible: its caller gives the slot back at once for the top band
                (`Ticket.preemptible`): it may run in the top band's reserve.

        Returns:
            the ticket, DISPATCHED or QUEUED (never QUEUED with `nowait`).
        """
        if self.closed:
            raise self.reject_closed()
        registry = self.registry
        band, fallback = registry.band_for(key.priority)
        immediate = self._may_start(band, gate, key.id)
        if nowait and not immediate:
            registry.forget_if_unused(band)
            raise WouldBlock(f"{key} cannot be dispatched without waiting")
        self.submitted += 1
        self.headroom.arrived(band.priority, now)
        if fallback:
            band.fallback_requests += 1
        self._seq += 1
        expires_at, slo_at = self._deadlines_of(ttl, slo, now)
        eta = None  # raises if refused: no flow is made then
        if not immediate:
            eta = self._check_admission(key, size, band, gate, now, expires_at, slo_at, claim)
        flow = registry.flow_for(band, key.id)
        ticket = Ticket(key, flow, size, now, self._seq, expires_at=expires_at, slo_at=slo_at)
        ticket._preemptible = preemptible
        estimate(ticket, flow, input_tokens, output_tokens)
        if immediate:
            self._start(ticket, now, gate)
            self.reservations.redeem(band.priority, key.id, now, claim)
            return ticket
        ticket._eta = eta
        self._queue(ticket, band, flow, now, front=False)
        self._arm_timers(ticket, now)
        self.reservations.redeem(band.priority, key.id, now, claim)
        return ticket

    def _deadlines_of(
        self, ttl: float | None, slo: float | None, now: float
    ) -> tuple[float | None, float | None]:
        """(expires_at, slo_at) of a request submitted at `now`; ttl None = the default."""
        if ttl is None:
            ttl = self.registry.config.default_ttl
        expires_at = None if ttl is None or ttl == math.inf else now + ttl
        return expires_at, None if slo is None else now + slo

    def _may_start(self, band: Band, gate: SaturationDetector, flow_id: str) -> bool:
        """True when a request for `band` may be dispatched on arrival: its tenant is
        below its ceiling, nothing dispatchable waits in its band or above (work parked
        lower down, or held by tenants at their ceiling, does not hold it back) and the
        gate lets this band dispatch."""
        if self.tenants and (tenant := self.tenants.get(flow_id)) is not None and tenant.full:
            return False
        if self.queued_requests:
            for level in self.registry.levels:
                if level.queued_requests > level.held_requests:
                    return False
                if level is band:
                    break
        return self.can_dispatch(gate, band) and not self.slot_gate.probe_for_lower(gate, band)

    def _check_admission(
        self,
        key: FlowKey,
        size: int,
        band: Band,
        gate: SaturationDetector,
        now: float,
        expires_at: float | None,
        slo_at: float | None,
        claim: Claim,
    ) -> float | None:
        """Refuse the arrival (raise) or make room for it (displacement); see
        `_admission.py` for the order and the semantics. Returns its wait estimate."""
        config = self.registry.config
        error: Exception | None = None
        eta: float | None = None
        if config.no_endpoint_ttl == 0 and not self.slot_gate.has_endpoints(gate):
            error = NoEndpointsError(f"no backend is available for {key}")
        else:
            tenant = self.tenants.get(key.id) if self.tenants else None
            # Places promised with Retry-After are held against the band's limit.
            held = self.reservations.held_against(band.priority, key.id, now, claim)
            refuse = self.reservations.refusal
            error = limit_refusal(
                band, tenant, size, held, lambda limit: refuse(band, key.id, limit, now, claim)
            )
            if error is None:
                eta, position = self.estimate_wait(band.priority)
                error = early_rejection(config, key, (eta, position), now, expires_at, slo_at)
                error = error or self._make_room(size, band.priority, now)
        if error is not None:
            assert isinstance(error, QueueFullError | NoEndpointsError | DeadlineUnreachableError)
            self.outcomes[error.outcome] += 1
            self.registry.forget_if_unused(band)
            try:
                raise error
            finally:
                # This frame is in the error's traceback: without the local, the two
                # form no reference cycle (as asyncio does), and a refusal is freed by
                # reference counting instead of waiting for the cyclic collector.
                error = None
        return eta

    def estimate_wait(self, priority: int) -> tuple[float | None, int]:
        """(estimated queue wait of a new request at `priority`, its queue position)."""
        levels = self.registry.levels
        # Slots the top band takes back at once: preemptible work of the bands below it.
        below = self.preemptible_in_flight - (levels[0].reclaimable if levels else 0)
        return estimate_wait(levels, priority, self.headroom, self.in_flight, below)

    def _make_room(self, size: int, priority: int, now: float) -> QueueFullError | None:
        """Global limits: fit, displace lower-priority work to fit, or the error."""
        config = self.registry.config
        need_requests = shortfall(config.max_requests, self.queued_requests, 1)
        need_bytes = shortfall(config.max_bytes, self.queued_bytes, size)
        if not need_requests and not need_bytes:
            return None
        if config.displacement and (config.max_bytes is None or size <= config.max_bytes):
            victims = displacement_victims(
                self.registry.levels, priority, need_requests, need_bytes
            )
            if victims is not None:
                for victim in victims:
                    self.evict(victim, Outcome.EVICTED_DISPLACED, now)
                self._displaced.extend(victims)
                return None
        if need_requests:
            return QueueFullError(f"the controller holds its max_requests={config.max_requests}")
        return QueueFullError(
            f"the controller would exceed max_bytes={config.max_bytes} "
            f"({self.queued_bytes} queued + {size})"
        )

    def take_displaced(self) -> list[Ticket]:
        """The tickets displaced since the last call (their waiters must be failed)."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def _queue(self, ticket: Ticket, band: Band, flow: Flow, now: float, *, front: bool) -> None:
        """Put `ticket` in its flow's queue (at the head for a requeue) and count it."""
        # A ticket dispatched on arrival never had its key; the same ordering gives a
        # requeued one the place it had (its arrival precedes what queued after it).
        ticket._sort_key = band.ordering.sort_key(ticket)
        ticket._state = State.QUEUED
        size = ticket._size
        self.queued_requests += 1
        self.preemptible_queued += ticket._preemptible
        self.queued_bytes += size
        band.queued_requests += 1
        band.queued_bytes += size
        flow.queued_bytes += size
        flow.last_backlogged = now
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.queued += 1
        if flow.queue.push_front(ticket) if front else flow.queue.push(ticket):
            band.fairness.head_changed(flow)

    def _arm_timers(self, ticket: Ticket, now: float) -> None:
        """Give a ticket just queued its TTL and no-endpoint deadlines."""
        no_endpoint_ttl = self.registry.config.no_endpoint_ttl
        self._deadlines.arm(ticket, no_endpoint_ttl, now, self.queued_requests)

    # -- dispatch --------------------------------------------------------------------

    def dispatch(self, now: float, gate: SaturationDetector) -> list[Ticket]:
        """Dispatch as many queued requests as the gate allows, by priority.

        Tickets whose waiter was cancelled in the meantime are evicted instead
        (EvictedCancelled), never dispatched.
        """
        out: list[Ticket] = []
        self.blocked = self.saturated = False
        if not self.queued_requests:
            return out
        tenants = self.tenants
        for band in self.registry.levels:
            while band.queued_requests > band.held_requests:
                if not self.slot_gate.allows(gate, band):
                    self.blocked = True
                    self.saturated = not self.slot_gate.allows(gate)
                    return out
                if self.slot_gate.probe_for_lower(gate, band):
                    break  # only untested slots are free: a lower band tests them
                try:
                    flow = band.fairness.select()
                except Exception as error:
                    self._fault(
                        f"fairness policy of band {band.priority} failed; skipping it", error
                    )
                    break
                if flow is None:
                    self._fault(f"fairness policy of band {band.priority} found no flow")
                    break
                if tenants and (tenant := tenants.get(flow.key.id)) is not None and tenant.full:
                    tenants.park(tenant, flow)  # others go on; back when it has room
                    continue
                if not self._headroom_allows(gate, band, flow.queue.peek()):
                    # Free slots are kept for higher bands. Lower bands go on: their
                    # preemptible work may use the top band's share (never more).
                    self.blocked = True
                    break
                ticket = flow.queue.pop()
                self._unqueue(ticket, band, flow, now)
                waiter = ticket._waiter
                if waiter is not None and waiter.cancelled():
                    self._finish(ticket, Outcome.EVICTED_CANCELLED)
                    band.fairness.head_changed(flow)
                    self.registry.settle(flow, now)
                    continue
                self._start(ticket, now, gate)
                band.fairness.dispatched(flow, ticket)
                if band.config.max_requests is not None:  # feeds Retry-After promises
                    self.reservations.left(band.priority, now)
                out.append(ticket)
        return out

    def can_dispatch(self, gate: SaturationDetector, band: Band | None = None) -> bool:
        """True when the gate has endpoints, is not saturated, and (for `band`) is below
        the band's `max_utilization` and leaves the bands above it their headroom (for
        a request that is not preemptible). A failing gate counts as saturated."""
        return self.slot_gate.allows(gate, band) and (
            band is None or self._headroom_allows(gate, band, None)
        )

    def _headroom_allows(self, gate: SaturationDetector, band: Band, head: Ticket | None) -> bool:
        """Whether `band` (its request `head`, None if not known) leaves the bands above
        it the free slots their demand needs (`SlotGate.headroom_allows`)."""
        return self.slot_gate.headroom_allows(
            gate, band, head, self.preemptible_in_flight, self.preemptible_queued
        )

    def leaves_headroom(
        self, gate: SaturationDetector, priority: int, preemptible: bool = False
    ) -> bool:
        """`SlotGate.leaves_headroom`: one more request in flight at `priority` leaves
        the bands above it their headroom."""
        return self.slot_gate.leaves_headroom(gate, priority, preemptible)

    def _start(self, ticket: Ticket, now: float, gate: SaturationDetector) -> None:
        ticket._state = State.DISPATCHED
        ticket._dispatched_at = now
        ticket._outcome = Outcome.DISPATCHED
        self.outcomes[Outcome.DISPATCHED] += 1
        self.in_flight += 1
        if ticket._preemptible:
            ticket._reserve_held = True
            self.preemptible_in_flight += 1
            ticket._flow.band.reclaimable += 1
        flow = ticket._flow
        flow.band.in_flight += 1
        flow.in_flight += 1
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.in_flight += 1
        self._charge(flow, ticket._input_tokens, ticket._output_tokens, now)
        try:
            gate.on_dispatch(ticket)
        except Exception as error:
            self._fault("saturation detector failed in on_dispatch", error)

    def _charge(self, flow: Flow, input_tokens: int, output_tokens: int, now: float) -> None:
        """Account tokens served to `flow` (negative counts refund an over-estimate)."""
        charge(flow, input_tokens, output_tokens, now, self.registry.config.fairness_window)

    def record_usage(
        self,
        ticket: Ticket,
        input_tokens: int | None,
        output_tokens: int | None,
        now: float,
        *,
        final: bool = True,
    ) -> bool:
        """Replace a dispatched ticket's charged tokens by actual usage (running totals).

        Only a final output count feeds the flow's output estimate (when released).
        """
        if ticket._state not in (State.DISPATCHED, State.RELEASED):
            return False
        window = self.registry.config.fairness_window
        record_usage(ticket, input_tokens, output_tokens, now, window, final=final)
        return True

    def _unqueue(self, ticket: Ticket, band: Band, flow: Flow, now: float) -> None:
        flow.last_backlogged = now
        size = ticket._size
        self.queued_requests -= 1
        self.preemptible_queued -= ticket._preemptible
        self.queued_bytes -= size
        band.queued_requests -= 1
        band.queued_bytes -= size
        flow.queued_bytes -= size
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.queued -= 1

    def _finish(self, ticket: Ticket, outcome: Outcome) -> None:
        ticket._state = State.FINISHED
        ticket._outcome = outcome
        self.outcomes[outcome] += 1

    # -- leaving: release, cancel, revoke, expire, close -------------------------------

    def release(self, ticket: Ticket, now: float, gate: SaturationDetector) -> bool:
        """Give back a dispatched ticket's in-flight slot. Returns False if not in flight."""
        if ticket._state is not State.DISPATCHED:
            return False
        ticket._state = State.RELEASED
        if ticket._usage_known:
            learn_output(ticket._flow, ticket._output_tokens)
        self._end_flight(ticket, now, gate)
        return True

    def _end_flight(self, ticket: Ticket, now: float, gate: SaturationDetector) -> None:
        flow = ticket._flow
        self.in_flight -= 1
        self._unhold(ticket)
        flow.band.in_flight -= 1
        flow.in_flight -= 1
        held = now - ticket._dispatched_at if ticket._dispatched_at is not None else 0.0
        self.headroom.completed(flow.band.priority, held, now)
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.in_flight -= 1
            if tenant.parked and not tenant.full:
                self.tenants.unpark(tenant)
        try:
            gate.on_release(ticket)
        except Exception as error:
            self._fault("saturation detector failed in on_release", error)
        self.registry.settle(flow, now)

    def holds_slot(self, ticket: Ticket, held: bool) -> None:
        """A dispatched preemptible `ticket` lent its slot (`held` False: a paused
        request waiting for its home backend holds nothing the top band could take
        back) or got one again (True). Only what counts as reclaimable changes."""
        if not held:
            self._unhold(ticket)
        elif ticket._preemptible and ticket._state is State.DISPATCHED and not ticket._reserve_held:
            ticket._reserve_held = True
            self.preemptible_in_flight += 1
            ticket._flow.band.reclaimable += 1

    def _unhold(self, ticket: Ticket) -> None:
        if ticket._reserve_held:
            ticket._reserve_held = False
            self.preemptible_in_flight -= 1
            ticket._flow.band.reclaimable -= 1

    def revoke(self, ticket: Ticket, now: float, gate: SaturationDetector) -> bool:
        """Undo a dispatch that its caller never received (cancelled in between).

        The outcome becomes EvictedCancelled and the in-flight slot is given back.
        """
        if ticket._state is not State.DISPATCHED or ticket._handed_over:
            return False
        self.outcomes[Outcome.DISPATCHED] -= 1
        self._finish(ticket, Outcome.EVICTED_CANCELLED)
        self._end_flight(ticket, now, gate)
        return True

    def requeue(self, ticket: Ticket, now: float, gate: SaturationDetector) -> bool:
        """Take a dispatched ticket back from flight and queue it again, at the head of
        its flow (preemption before its answer started). Returns False, changing
        nothing, unless it is in flight.

        Its in-flight slot is given back (`gate.on_release`), its token charge refunded
        (charged again at the next dispatch), and it counts as queued, not dispatched,
        so the counters still add up. It was admitted once and waits again only because
        it was preempted: its TTL starts
        again from now (so it cannot expire at once for a wait it did not choose, nor
        wait forever). The caller sets a new waiter and runs a dispatch pass.
        """
        if ticket._state is not State.DISPATCHED:
            return False
        flow = ticket._flow
        band = flow.band
        self.outcomes[Outcome.DISPATCHED] -= 1
        self.in_flight -= 1
        self._unhold(ticket)
        band.in_flight -= 1
        flow.in_flight -= 1
        tenant = self.tenants.get(flow.key.id) if self.tenants else None
        if tenant is not None:
            tenant.in_flight -= 1
        try:
            gate.on_release(ticket)
        except Exception as error:
            self._fault("saturation detector failed in on_release", error)
        self._charge(flow, -ticket._input_tokens, -ticket._output_tokens, now)
        ticket._requeues += 1
        self.requeued += 1
        ticket._dispatched_at = None
        ticket._outcome = None
        ticket.assignment = None
        ticket._handed_over = False
        ticket._usage_known = False
        self._queue(ticket, band, flow, now, front=True)
        if tenant is not None and tenant.parked and not tenant.full:
            self.tenants.unpark(tenant)
        if ticket._expires_at is not None:
            ticket._expires_at = now + ticket._ttl
        self._arm_timers(ticket, now)
        return True

    def evict(self, ticket: Ticket, outcome: Outcome, now: float) -> bool:
        """Remove a queued ticket with `outcome`. Returns False if it was not queued."""
        if ticket._state is not State.QUEUED:
            return False
        flow = ticket._flow
        band = flow.band
        head_changed = flow.queue.discard(ticket)
        self._unqueue(ticket, band, flow, now)
        self._finish(ticket, outcome)
        if head_changed:
            band.fairness.head_changed(flow)
        self.registry.settle(flow, now)
        self._deadlines.compact(self.queued_requests)
        return True

    def cancel(self, ticket: Ticket, now: float) -> bool:
        """The waiter was cancelled: evict as EvictedCancelled if still queued."""
        return self.evict(ticket, Outcome.EVICTED_CANCELLED, now)

    def next_deadline(self) -> float | None:
        """The earliest time at which `expire` has work to do, or None."""
        if self.closed:
            return None
        at = self._deadlines.earliest()
        gc_at = self.registry.next_collection_at()
        if gc_at is not None and (at is None or gc_at < at):
            at = gc_at
        return at

    def expire(self, now: float, gate: SaturationDetector) -> list[Ticket]:
        """Evict what is due at `now` and collect idle flows and bands.

        Returns:
            the evicted tickets (EvictedTTL or EvictedNoEndpoints).
        """
        out: list[Ticket] = []
        no_endpoints: bool | None = None
        while (due := self._deadlines.pop_due(now)) is not None:
            kind, ticket = due
            if kind == TTL:
                self.evict(ticket, Outcome.EVICTED_TTL, now)
                out.append(ticket)
                continue
            if no_endpoints is None:
                no_endpoints = not self.slot_gate.has_endpoints(gate)
            if no_endpoints:
                self.evict(ticket, Outcome.EVICTED_NO_ENDPOINTS, now)
                out.append(ticket)
        self.registry.collect(now)
        return out

    def endpoints_lost(self, now: float) -> list[Ticket]:
        """The pool just lost its last backend: evict what is past its no-endpoint TTL."""
        if self.registry.config.no_endpoint_ttl is None:
            return []
        due = [
            t
            for band in self.registry.levels
            for flow in list(band.flows.values())
            for t in _queued(flow)
            if t._no_endpoint_at is not None and t._no_endpoint_at <= now
        ]
        for ticket in due:
            self.evict(ticket, Outcome.EVICTED_NO_ENDPOINTS, now)
        return due

    def close(self, now: float) -> list[Ticket]:
        """Stop admitting and evict everything queued (EvictedOther)."""
        self.closed = True
        evicted = [
            t
            for band in self.registry.levels
            for flow in list(band.flows.values())
            for t in _queued(flow)
        ]
        for ticket in evicted:
            self.evict(ticket, Outcome.EVICTED_OTHER, now)
        self._deadlines.clear()
        return evicted

    # -- configuration ----------------------------------------------------------------

    def reconcile(self, desired: Iterable[int]) -> None:
        """Follow a desired set of priorities (see `FlowController.reconcile_priorities`)."""
        self.registry.reconcile(desired)

    def reconfigure(self, config: FlowControlConfig, now: float) -> None:
        """Adopt `config` without dropping anything queued or in flight.

        Bands whose ordering, fairness or queue changed get new policy objects and
        their queued tickets are re-inserted in their old order under the new keys. A
        band no longer static becomes dynamic: collected once idle (from `now` if it
        has no flow).
        """
        changed = self.registry.reconfigure(config, now)
        # Tenants first: that unparks every flow, so each rebuilt queue is a plain one.
        self.tenants.reconfigure(config.tenants, self.registry.levels)
        self.reservations.config = config
        for band in changed:
            band.rebuild()

    # -- statistics -------------------------------------------------------------------

    def statistics(self, now: float | None = None, top: int | None = None) -> ControllerStatistics:
        """A frozen snapshot; every figure is exact.

        Args:
            now: the current time, for the windowed fairness figures (None: omit them).
            top: include only the `top` largest flows (most queued, then most in flight);
                None = every flow.
        """
        bands, flows = band_statistics(self.registry, now, top)
        config = self.registry.config
        return ControllerStatistics(
            submitted=self.submitted,
            queued_requests=self.queued_requests,
            queued_bytes=self.queued_bytes,
            in_flight=self.in_flight,
            max_requests=config.max_requests,
            max_bytes=config.max_bytes,
            outcomes=dict(self.outcomes),
            bands=bands,
            flows=flows,
            closed=self.closed,
        )

    def flow_statistics(self, priority: int, flow_id: str) -> FlowStatistics | None:
        """The snapshot of one flow, or None; O(1)."""
        return flow_snapshot(self.registry, priority, flow_id)

    def __repr__(self) -> str:
        return (
            f"<Scheduler [bands: {len(self.registry.bands)} | queued: {self.queued_requests}"
            f" | in flight: {self.in_flight} | submitted: {self.submitted}]>"
        )


def _queued(flow: Flow) -> list[Ticket]:
    """The live tickets of a flow, without disturbing its queue."""
    return flow.queue.live()
