"""Tenants: per-fairness-id ceilings across all bands (in flight, queued).

Theory of operation
-------------------
A tenant is a fairness id with limits (`FlowControlConfig.tenants`). Its counters span
every band: `in_flight` counts its dispatched requests, `queued` its waiting ones.

`max_queued` is an admission check (QueueFullError). `max_in_flight` is a dispatch
ceiling that must not hold back anyone else, so a tenant at its ceiling has its flows
*parked*: the flow's queue is swapped for a `Parked` wrapper that looks empty to the
fairness policy (len 0, no head) while pushes, removals and listings still reach the
real queue. A policy already drops a flow whose queue empties (`head_changed`), so any
policy that keeps the protocol skips parked flows without knowing about tenants, and the
next flow is chosen in the usual O(1)/O(log n).

Parking is lazy and event-driven: a flow is parked the first time the policy selects it
while its tenant is full (once per flow per ceiling episode), and every parked flow of
a tenant is handed back (`head_changed`) the moment a release takes the tenant below
its ceiling. Nothing scans flows per dispatch; a blocked tenant costs one selection per
flow per episode, not one per dispatch.

Parked tickets are still queued (they count in the band's `queued_requests`); the band
counts them in `held_requests` too, so "is anything dispatchable waiting here?" is
`queued_requests > held_requests` in O(1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._config import TenantLimits
    from ._queues import Queue
    from ._registry import Band, Flow
    from ._ticket import Ticket

__all__ = ["Parked", "Tenant", "Tenants", "waiting"]


@final
class Parked:
    """A flow's queue while its tenant is at its in-flight ceiling: empty to the
    fairness policy, the real queue to everything else."""

    __slots__ = ("band", "inner")

    def __init__(self, inner: Queue, band: Band) -> None:
        self.inner = inner
        self.band = band

    #: Capabilities are checked on the queue classes at config time, never on this.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __len__(self) -> int:
        return 0

    def peek(self) -> Ticket | None:
        return None

    def pop(self) -> Ticket:
        raise AssertionError("pop from a parked flow")

    def push(self, ticket: Ticket, /) -> bool:
        self.inner.push(ticket)
        self.band.held_requests += 1
        return False  # no head the policy could see

    def push_front(self, ticket: Ticket, /) -> bool:
        self.inner.push_front(ticket)
        self.band.held_requests += 1
        return False

    def discard(self, ticket: Ticket, /) -> bool:
        self.inner.discard(ticket)
        self.band.held_requests -= 1
        return False

    def drain(self) -> list[Ticket]:
        tickets = self.inner.drain()
        self.band.held_requests -= len(tickets)
        return tickets

    def live(self) -> list[Ticket]:
        return self.inner.live()


def waiting(flow: Flow) -> int:
    """The number of tickets queued in `flow`, parked or not."""
    queue = flow.queue
    return len(queue.inner) if isinstance(queue, Parked) else len(queue)


@final
class Tenant:
    """One fairness id's limits and counters across all bands."""

    __slots__ = ("id", "in_flight", "max_in_flight", "max_queued", "parked", "queued")

    def __init__(self, tenant_id: str, limits: TenantLimits) -> None:
        self.id = tenant_id
        self.max_in_flight = limits.max_in_flight
        self.max_queued = limits.max_queued
        self.in_flight = 0
        self.queued = 0
        #: Flows parked in this ceiling episode (one per band at most).
        self.parked: list[Flow] = []

    @property
    def full(self) -> bool:
        """True while the tenant holds its `max_in_flight`."""
        limit = self.max_in_flight
        return limit is not None and self.in_flight >= limit

    def __repr__(self) -> str:
        return (
            f"<Tenant {self.id} in_flight={self.in_flight}/{self.max_in_flight} "
            f"queued={self.queued}/{self.max_queued} parked={len(self.parked)}>"
        )


@final
class Tenants(dict[str, Tenant]):
    """The tenants by fairness id; lookups are one dict access."""

    def __init__(self, limits: Mapping[str, TenantLimits]) -> None:
        super().__init__((tid, Tenant(tid, lim)) for tid, lim in limits.items())

    def park(self, tenant: Tenant, flow: Flow) -> None:
        """Hide `flow` from its band's fairness policy until `tenant` has room."""
        queue = flow.queue
        if isinstance(queue, Parked):
            return
        band = flow.band
        flow.queue = Parked(queue, band)
        band.held_requests += len(queue)
        tenant.parked.append(flow)
        band.fairness.head_changed(flow)  # it looks empty now: the policy drops it

    def unpark(self, tenant: Tenant) -> None:
        """Give every parked flow of `tenant` back to its fairness policy."""
        flows, tenant.parked = tenant.parked, []
        for flow in flows:
            queue = flow.queue
            if not isinstance(queue, Parked):
                continue  # rebuilt meanwhile
            flow.queue = queue.inner
            queue.band.held_requests -= len(queue.inner)
            flow.band.fairness.head_changed(flow)

    def reconfigure(self, limits: Mapping[str, TenantLimits], bands: Iterable[Band]) -> None:
        """Adopt new limits. Counters of tenants that stay are kept; a new tenant's are
        counted from its flows; every flow is unparked (parking resumes lazily)."""
        for tenant in self.values():
            self.unpark(tenant)
        bands = list(bands)
        old = dict(self)
        self.clear()
        for tid, lim in limits.items():
            kept = old.get(tid)
            if kept is None:
                tenant = Tenant(tid, lim)
                for band in bands:
                    flow = band.flows.get(tid)
                    if flow is not None:
                        tenant.in_flight += flow.in_flight
                        tenant.queued += len(flow.queue)
            else:
                tenant = kept
                tenant.max_in_flight = lim.max_in_flight
                tenant.max_queued = lim.max_queued
            self[tid] = tenant
