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
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import TYPE_CHECKING, Final, final

from .._errors import (
    ControllerClosedError,
    DeadlineUnreachableError,
    NoEndpointsError,
    QueueFullError,
    WouldBlock,
)
from .._types import (
    ControllerStatistics,
    FlowKey,
    Outcome,
)
from ._admission import deadline_budget, displacement_victims, estimate_wait, shortfall
from ._headroom import DemandHeadroom
from ._registry import Registry
from ._statistics import snapshot
from ._tenants import Tenants
from ._ticket import State, Ticket
from ._tokens import MAX_REQUEST_TOKENS, charge, learn_output, record_usage

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._config import FlowControlConfig
    from ._registry import Band, Flow
    from ._saturation import SaturationDetector

__all__ = ["MAX_REQUEST_TOKENS", "Scheduler"]

_log = logging.getLogger("sluicegate")

_TTL: Final = 0
_NO_ENDPOINT: Final = 1
#: Prompt-size estimate when the caller gives none: about 4 bytes of text per token.
_BYTES_PER_TOKEN: Final = 4
#: Output estimate for a flow with no history and no max_tokens.
_DEFAULT_OUTPUT_TOKENS: Final = 256
#: Dead timer entries tolerated beyond twice the live ones before the heap is rebuilt.
_TIMER_SLACK: Final = 64


@final
class Scheduler:
    """All flow-control state, and the synchronous steps that change it."""

    def __init__(self, config: FlowControlConfig) -> None:
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
        self.full = False
        self._seq = 0
        #: Tickets taken back from flight and queued again (`requeue`).
        self.requeued = 0
        #: Free slots kept for higher bands, sized to their demand (`_headroom.py`).
        self.headroom = DemandHeadroom()
        #: Tickets evicted by displacement in the last `submit`, for the shell to fail
        #: (`take_displaced`).
        self._displaced: list[Ticket] = []
        # (deadline, seq, kind, ticket); entries of tickets no longer queued are skipped.
        self._timers: list[tuple[float, int, int, Ticket]] = []

    @property
    def config(self) -> FlowControlConfig:
        return self.registry.config

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
        ticket = self._ticket(key, size, ttl, slo, now, band, input_tokens, output_tokens)
        if immediate:
            ticket.flow = registry.flow_for(band, key.id)
            self._start(ticket, now, gate)
            return ticket
        self._check_admission(ticket, band, gate, now)
        flow = ticket.flow = registry.flow_for(band, key.id)
        self._enqueue(ticket, band, flow, now)
        return ticket

    def _ticket(
        self,
        key: FlowKey,
        size: int,
        ttl: float | None,
        slo: float | None,
        now: float,
        band: Band,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> Ticket:
        """A new ticket with its deadlines and (clamped) token estimates; no flow yet."""
        if ttl is None:
            ttl = self.registry.config.default_ttl
        self._seq += 1
        ticket = Ticket(
            key,
            size,
            now,
            self._seq,
            None if ttl is None or ttl == math.inf else now + ttl,
            None if slo is None else now + slo,
        )
        ticket.band, ticket.priority = band, band.priority
        if input_tokens is None:
            input_tokens = -(-size // _BYTES_PER_TOKEN)
        if output_tokens is None:
            # The flow's own history, else its band's, else a fixed prior.
            flow = band.flows.get(key.id)
            average = None if flow is None else flow.output_average
            if average is None:
                average = band.output_average
            output_tokens = _DEFAULT_OUTPUT_TOKENS if average is None else round(average)
        ticket.input_tokens = min(input_tokens, MAX_REQUEST_TOKENS)
        ticket.output_tokens = min(output_tokens, MAX_REQUEST_TOKENS)
        return ticket

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
        return self.can_dispatch(gate, band) and not self._probe_for_lower(gate, band)

    def _check_admission(
        self, ticket: Ticket, band: Band, gate: SaturationDetector, now: float
    ) -> None:
        """Refuse the arrival (raise) or make room for it (displacement); see
        `_admission.py` for the order and the semantics."""
        config = self.registry.config
        error: Exception | None = None
        tenant = self.tenants.get(ticket.key.id) if self.tenants else None
        if config.no_endpoint_ttl == 0 and not _has_endpoints(gate):
            error = NoEndpointsError(f"no backend is available for {ticket.key}")
        elif (
            tenant is not None
            and (limit := tenant.max_queued) is not None
            and tenant.queued >= limit
        ):
            error = QueueFullError(f"tenant {tenant.id} holds its max_queued={limit}")
        elif (limit := band.config.max_requests) is not None and band.queued_requests >= limit:
            error = QueueFullError(f"band {band.priority} holds its max_requests={limit}")
        elif (
            limit := band.config.max_bytes
        ) is not None and band.queued_bytes + ticket.size > limit:
            error = QueueFullError(
                f"band {band.priority} would exceed max_bytes={limit} "
                f"({band.queued_bytes} queued + {ticket.size})"
            )
        else:
            error = self._check_deadline(ticket, band, now) or self._make_room(ticket, now)
        if error is not None:
            assert isinstance(error, QueueFullError | NoEndpointsError | DeadlineUnreachableError)
            self._finish(ticket, error.outcome)
            self.registry.forget_if_unused(band)
            raise error

    def estimate_wait(self, priority: int) -> tuple[float | None, int]:
        """(estimated queue wait of a new request at `priority`, its queue position)."""
        return estimate_wait(self.registry.levels, priority, self.headroom, self.in_flight)

    def _check_deadline(
        self, ticket: Ticket, band: Band, now: float
    ) -> DeadlineUnreachableError | None:
        """Early rejection: the deadline cannot be met given the work ahead."""
        config = self.registry.config
        wait, position = self.estimate_wait(band.priority)
        ticket.eta = wait
        budget = deadline_budget(ticket, now)
        if not config.early_reject or wait is None or budget is None:
            return None
        if wait <= budget * (1.0 + config.early_reject_margin):
            return None
        which = "SLO" if ticket.slo_at is not None else "TTL"
        return DeadlineUnreachableError(
            f"{ticket.key} cannot start within its {which} ({budget:.3f} s): about "
            f"{wait:.3f} s of work is queued ahead of it (position {position})",
            wait_s=wait,
            position=position,
        )

    def _make_room(self, ticket: Ticket, now: float) -> QueueFullError | None:
        """Global limits: fit, displace lower-priority work to fit, or the error."""
        config = self.registry.config
        need_requests = shortfall(config.max_requests, self.queued_requests, 1)
        need_bytes = shortfall(config.max_bytes, self.queued_bytes, ticket.size)
        if not need_requests and not need_bytes:
            return None
        if config.displacement and (config.max_bytes is None or ticket.size <= config.max_bytes):
            victims = displacement_victims(
                self.registry.levels, ticket.priority, need_requests, need_bytes
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
            f"({self.queued_bytes} queued + {ticket.size})"
        )

    def take_displaced(self) -> list[Ticket]:
        """The tickets displaced since the last call (their waiters must be failed)."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def _enqueue(self, ticket: Ticket, band: Band, flow: Flow, now: float) -> None:
        self._queue(ticket, band, flow, now, front=False)
        self._arm_timers(ticket, now)

    def _queue(self, ticket: Ticket, band: Band, flow: Flow, now: float, *, front: bool) -> None:
        """Put `ticket` in its flow's queue (at the head for a requeue) and count it."""
        # A ticket dispatched on arrival never had its key; the same ordering gives a
        # requeued one the place it had (its arrival precedes what queued after it).
        ticket.sort_key = band.ordering.sort_key(ticket)
        ticket.state = State.QUEUED
        size = ticket.size
        self.queued_requests += 1
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
        """Push the ticket's TTL and no-endpoint deadlines. An entry counts only while it
        names the ticket's current deadline (a requeued ticket gets new ones)."""
        timers = self._compact_timers()
        if ticket.expires_at is not None:
            heapq.heappush(timers, (ticket.expires_at, ticket.seq, _TTL, ticket))
        no_endpoint_ttl = self.registry.config.no_endpoint_ttl
        if no_endpoint_ttl is not None:
            ticket.no_endpoint_at = now + no_endpoint_ttl
            heapq.heappush(timers, (ticket.no_endpoint_at, ticket.seq, _NO_ENDPOINT, ticket))

    def _compact_timers(self) -> list[tuple[float, int, int, Ticket]]:
        """The timer heap, rebuilt when dead entries outnumber the live ones.

        Entries of tickets that left the queue are skipped lazily at the top; one long
        waiter at the top, or mass cancellation, would let them pile up.
        """
        timers = self._timers
        if len(timers) > 4 * self.queued_requests + _TIMER_SLACK:
            # In place: `expire` may be popping from this very list.
            timers[:] = [e for e in timers if e[3].state is State.QUEUED]
            heapq.heapify(timers)
        return timers

    # -- dispatch --------------------------------------------------------------------

    def dispatch(self, now: float, gate: SaturationDetector) -> list[Ticket]:
        """Dispatch as many queued requests as the gate allows, by priority.

        Tickets whose waiter was cancelled in the meantime are evicted instead
        (EvictedCancelled), never dispatched.
        """
        out: list[Ticket] = []
        self.blocked = self.full = False
        if not self.queued_requests:
            return out
        tenants = self.tenants
        for band in self.registry.levels:
            while band.queued_requests > band.held_requests:
                if not self.can_dispatch(gate, band):
                    self.blocked = True
                    self.full = not self.can_dispatch(gate)
                    return out
                if self._probe_for_lower(gate, band):
                    break  # only untested slots are free: a lower band tests them
                try:
                    flow = band.fairness.select()
                except Exception:
                    _log.exception("fairness policy of band %d failed; skipping it", band.priority)
                    break
                if flow is None:
                    _log.error("fairness policy of band %d found no flow", band.priority)
                    break
                if tenants and (tenant := tenants.get(flow.key.id)) is not None and tenant.full:
                    tenants.park(tenant, flow)  # others go on; back when it has room
                    continue
                ticket = flow.queue.pop()
                self._unqueue(ticket, band, flow, now)
                waiter = ticket.waiter
                if waiter is not None and waiter.cancelled():
                    self._finish(ticket, Outcome.EVICTED_CANCELLED)
                    band.fairness.head_changed(flow)
                    self.registry.settle(flow, now)
                    continue
                self._start(ticket, now, gate)
                band.fairness.dispatched(flow, ticket)
                out.append(ticket)
        return out

    def can_dispatch(self, gate: SaturationDetector, band: Band | None = None) -> bool:
        """True when the gate has endpoints, is not saturated, and (for `band`) is below
        the band's `max_utilization`. A failing gate counts as saturated."""
        try:
            if not gate.has_endpoints() or gate.is_saturated():
                return False
            ceiling = 1.0 if band is None else band.config.max_utilization
            if ceiling < 1.0 and gate.utilization() >= ceiling:
                return False
            return band is None or self._headroom_allows(gate, band)
        except Exception:
            _log.exception("saturation detector failed; treating the pool as saturated")
            return False

    def _probe_for_lower(self, gate: SaturationDetector, band: Band) -> bool:
        """Whether every free slot is a probe (it may put its request in an engine's own
        queue, see the adaptive detector) and a lower band has work to test it with."""
        probe_only = getattr(gate, "probe_only", None)
        if probe_only is None or not probe_only():
            return False
        levels = self.registry.levels
        below = levels[levels.index(band) + 1 :]
        return any(b.queued_requests > b.held_requests for b in below)

    def _headroom_allows(self, gate: SaturationDetector, band: Band) -> bool:
        """Whether `band` leaves the bands above it the free slots their demand needs."""
        slots = getattr(gate, "slots", None)
        if slots is None or not self.registry.config.demand_headroom:
            return True
        probe_for = getattr(gate, "probe_for", None)
        if probe_for is not None and probe_for(band.priority):
            return True  # it takes an untested slot, which higher bands leave alone
        counted: tuple[float, float] | None = slots()
        if counted is None:
            return True
        return self.headroom.allows(band.priority, *counted)

    def _start(self, ticket: Ticket, now: float, gate: SaturationDetector) -> None:
        ticket.state = State.DISPATCHED
        ticket.dispatched_at = now
        ticket.outcome = Outcome.DISPATCHED
        self.outcomes[Outcome.DISPATCHED] += 1
        self.in_flight += 1
        flow: Flow = ticket.flow  # type: ignore[assignment]  # set by submit
        flow.band.in_flight += 1
        flow.in_flight += 1
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.in_flight += 1
        self._charge(flow, ticket.input_tokens, ticket.output_tokens, now)
        try:
            gate.on_dispatch(ticket)
        except Exception:
            _log.exception("saturation detector failed in on_dispatch")

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
        if ticket.state not in (State.DISPATCHED, State.RELEASED):
            return False
        window = self.registry.config.fairness_window
        record_usage(ticket, input_tokens, output_tokens, now, window, final=final)
        return True

    def _unqueue(self, ticket: Ticket, band: Band, flow: Flow, now: float) -> None:
        flow.last_backlogged = now
        size = ticket.size
        self.queued_requests -= 1
        self.queued_bytes -= size
        band.queued_requests -= 1
        band.queued_bytes -= size
        flow.queued_bytes -= size
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.queued -= 1

    def _finish(self, ticket: Ticket, outcome: Outcome) -> None:
        ticket.state = State.FINISHED
        ticket.outcome = outcome
        self.outcomes[outcome] += 1

    # -- leaving: release, cancel, revoke, expire, close -------------------------------

    def release(self, ticket: Ticket, now: float, gate: SaturationDetector) -> bool:
        """Give back a dispatched ticket's in-flight slot. Returns False if not in flight."""
        if ticket.state is not State.DISPATCHED:
            return False
        ticket.state = State.RELEASED
        if ticket.usage_known:
            learn_output(ticket.flow, ticket.output_tokens)  # type: ignore[arg-type]  # set by submit
        self._end_flight(ticket, now, gate)
        return True

    def _end_flight(self, ticket: Ticket, now: float, gate: SaturationDetector) -> None:
        flow: Flow = ticket.flow  # type: ignore[assignment]  # set by submit
        self.in_flight -= 1
        flow.band.in_flight -= 1
        flow.in_flight -= 1
        held = now - ticket.dispatched_at if ticket.dispatched_at is not None else 0.0
        self.headroom.completed(flow.band.priority, held, now)
        if self.tenants and (tenant := self.tenants.get(flow.key.id)) is not None:
            tenant.in_flight -= 1
            if tenant.parked and not tenant.full:
                self.tenants.unpark(tenant)
        try:
            gate.on_release(ticket)
        except Exception:
            _log.exception("saturation detector failed in on_release")
        self.registry.settle(flow, now)

    def revoke(self, ticket: Ticket, now: float, gate: SaturationDetector) -> bool:
        """Undo a dispatch that its caller never received (cancelled in between).

        The outcome becomes EvictedCancelled and the in-flight slot is given back.
        """
        if ticket.state is not State.DISPATCHED or ticket.handed_over:
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
        if ticket.state is not State.DISPATCHED:
            return False
        flow: Flow = ticket.flow  # type: ignore[assignment]  # set by submit
        band = flow.band
        self.outcomes[Outcome.DISPATCHED] -= 1
        self.in_flight -= 1
        band.in_flight -= 1
        flow.in_flight -= 1
        tenant = self.tenants.get(flow.key.id) if self.tenants else None
        if tenant is not None:
            tenant.in_flight -= 1
        try:
            gate.on_release(ticket)
        except Exception:
            _log.exception("saturation detector failed in on_release")
        self._charge(flow, -ticket.input_tokens, -ticket.output_tokens, now)
        ticket.requeues += 1
        self.requeued += 1
        ticket.dispatched_at = None
        ticket.outcome = None
        ticket.assignment = None
        ticket.handed_over = False
        ticket.usage_known = False
        self._queue(ticket, band, flow, now, front=True)
        if tenant is not None and tenant.parked and not tenant.full:
            self.tenants.unpark(tenant)
        if ticket.expires_at is not None:
            ticket.expires_at = now + ticket.ttl
        self._arm_timers(ticket, now)
        return True

    def evict(self, ticket: Ticket, outcome: Outcome, now: float) -> bool:
        """Remove a queued ticket with `outcome`. Returns False if it was not queued."""
        if ticket.state is not State.QUEUED:
            return False
        flow: Flow = ticket.flow  # type: ignore[assignment]  # set by submit
        band = flow.band
        head_changed = flow.queue.discard(ticket)
        self._unqueue(ticket, band, flow, now)
        self._finish(ticket, outcome)
        if head_changed:
            band.fairness.head_changed(flow)
        self.registry.settle(flow, now)
        self._compact_timers()
        return True

    def cancel(self, ticket: Ticket, now: float) -> bool:
        """The waiter was cancelled: evict as EvictedCancelled if still queued."""
        return self.evict(ticket, Outcome.EVICTED_CANCELLED, now)

    def next_deadline(self) -> float | None:
        """The earliest time at which `expire` has work to do, or None."""
        if self.closed:
            return None
        timers = self._timers
        while timers and timers[0][3].state is not State.QUEUED:
            heapq.heappop(timers)
        at = timers[0][0] if timers else None
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
        timers = self._timers
        no_endpoints: bool | None = None
        while timers and timers[0][0] <= now:
            at, _, kind, ticket = heapq.heappop(timers)
            if ticket.state is not State.QUEUED:
                continue
            if at != (ticket.expires_at if kind == _TTL else ticket.no_endpoint_at):
                continue  # a deadline the ticket no longer has (it was requeued)
            if kind == _TTL:
                self.evict(ticket, Outcome.EVICTED_TTL, now)
                out.append(ticket)
                continue
            if no_endpoints is None:
                no_endpoints = not _has_endpoints(gate)
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
            if t.no_endpoint_at is not None and t.no_endpoint_at <= now
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
        self._timers.clear()
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
        self.tenants.reconfigure(config.tenants, self.registry.levels)
        for band in changed:
            self._rebuild(band)

    def _rebuild(self, band: Band) -> None:
        from ._policies import FAIRNESS_POLICIES, ORDERING_POLICIES
        from ._queues import QUEUES

        band.ordering = ORDERING_POLICIES[band.config.ordering]()
        band.fairness = FAIRNESS_POLICIES[band.config.fairness]()
        for flow in band.flows.values():
            tickets = flow.queue.drain()
            flow.queue = QUEUES[band.config.queue_name]()
            for ticket in tickets:
                ticket.sort_key = band.ordering.sort_key(ticket)
                flow.queue.push(ticket)
            if tickets:
                band.fairness.head_changed(flow)

    # -- statistics -------------------------------------------------------------------

    def statistics(self, now: float | None = None) -> ControllerStatistics:
        """A frozen snapshot; every figure is exact.

        Args:
            now: the current time, for the windowed fairness figures (None: omit them).
        """
        return snapshot(self, now)

    def __repr__(self) -> str:
        return (
            f"<Scheduler [bands: {len(self.registry.bands)} | queued: {self.queued_requests}"
            f" | in flight: {self.in_flight} | submitted: {self.submitted}]>"
        )


def _queued(flow: Flow) -> list[Ticket]:
    """The live tickets of a flow, without disturbing its queue."""
    return flow.queue.live()


def _has_endpoints(gate: SaturationDetector) -> bool:
    try:
        return gate.has_endpoints()
    except Exception:
        _log.exception("saturation detector failed in has_endpoints")
        return True
