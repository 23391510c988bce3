"""Bands and flows: provisioning, idle collection and reconciliation.

Theory of operation
-------------------
A band exists for every priority that is static (from config), 0, desired (the last
`reconcile`), or was seen on a request while dynamic bands are on. `levels` lists the
bands from the highest priority down; it is replaced, never mutated, so an iteration in
progress is never disturbed by a band appearing or going.

Flows are created on first use and collected after `flow_idle_timeout` with nothing
queued and nothing in flight. Idleness is tracked, not scanned for: a flow enters the
ordered `_idle_flows` map when it goes idle and leaves it when it gets work, so the
oldest idle flow is always first and collection only looks at what is due.

A band is removed in exactly two ways, both only when it holds no queued and no
in-flight request, and never when it is protected (static, 0 or desired):

* retirement: `reconcile` marks an undesired, non-empty band retiring; it goes the
  moment its last request leaves;
* idle collection: a dynamic band with no flow, `band_idle_timeout` after its last
  request left (its flows are kept `flow_idle_timeout`, which may not be longer).

A band first seen on a request that is refused is dropped at once: rejected requests
create no flow and keep no band (fairness ids are client-chosen; no state may grow
with them).

So nothing queued is ever dropped, orphaned or moved by a removal.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, final

from .._types import FlowKey
from ._policies import FAIRNESS_POLICIES, ORDERING_POLICIES
from ._queues import QUEUES
from ._tenants import waiting

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._config import BandConfig, FlowControlConfig
    from ._policies import FairnessPolicy, OrderingPolicy
    from ._queues import Queue

__all__ = ["Band", "Flow", "Registry"]


@final
class Flow:
    """One (fairness id, band) pair: a queue, counters and token accounting."""

    __slots__ = (
        "band",
        "fair_counter",
        "in_flight",
        "input_tokens",
        "key",
        "last_backlogged",
        "output_average",
        "output_tokens",
        "queue",
        "queued_bytes",
        "service",
        "weight",
    )

    def __init__(self, key: FlowKey, band: Band, weight: float) -> None:
        self.key = key
        self.band = band
        self.weight = weight
        self.queue: Queue = QUEUES[band.config.queue_name]()
        self.queued_bytes = 0
        self.in_flight = 0
        #: Tokens served (estimates until corrected by recorded usage).
        self.input_tokens = 0
        self.output_tokens = 0
        #: Weighted token service divided by the weight: what fairness equalises.
        self.service = 0.0
        #: Owned by the band's fairness policy (token-fair keeps its virtual counter here).
        self.fair_counter = 0.0
        #: Moving average of actual output tokens, the estimate when max_tokens is unknown.
        self.output_average: float | None = None
        self.last_backlogged = -math.inf

    def __repr__(self) -> str:
        return f"<Flow {self.key} queued={len(self.queue)} in_flight={self.in_flight}>"


@final
class Band:
    """One priority level: its flows, policies, limits and counters."""

    __slots__ = (
        "config",
        "fairness",
        "fallback_requests",
        "flows",
        "held_requests",
        "in_flight",
        "ordering",
        "output_average",
        "priority",
        "queued_bytes",
        "queued_requests",
        "reclaimable",
        "retiring",
        "service_log",
        "static",
    )

    def __init__(self, priority: int, config: BandConfig, *, static: bool) -> None:
        self.priority = priority
        self.static = static
        self.retiring = False
        self.flows: dict[str, Flow] = {}
        self.queued_requests = 0
        self.queued_bytes = 0
        #: Queued requests of tenants at their in-flight ceiling (see `_tenants`).
        self.held_requests = 0
        self.in_flight = 0
        #: Its preemptible tickets holding a slot: the top band takes them back at once.
        self.reclaimable = 0
        self.fallback_requests = 0
        #: Moving average of actual outputs in the band: the prior for a new flow.
        self.output_average: float | None = None
        #: Recent service per flow in time buckets (start, {flow: normalised cost}), for
        #: the windowed statistics: memory grows with flows and buckets, not with rate.
        self.service_log: deque[tuple[float, dict[Flow, float]]] = deque()
        self.config = config
        self.ordering: OrderingPolicy = ORDERING_POLICIES[config.ordering]()
        self.fairness: FairnessPolicy = FAIRNESS_POLICIES[config.fairness]()

    @property
    def drained(self) -> bool:
        """True when nothing is queued or in flight here."""
        return self.queued_requests == 0 and self.in_flight == 0

    def rebuild(self) -> None:
        """New policy objects and queues after a config change: every queued ticket is
        re-inserted in its old order under its new key. No flow may be parked."""
        config = self.config
        self.ordering = ORDERING_POLICIES[config.ordering]()
        self.fairness = FAIRNESS_POLICIES[config.fairness]()
        for flow in self.flows.values():
            tickets = flow.queue.drain()
            flow.queue = QUEUES[config.queue_name]()
            for ticket in tickets:
                ticket._sort_key = self.ordering.sort_key(ticket)
                flow.queue.push(ticket)
            if tickets:
                self.fairness.head_changed(flow)

    def __repr__(self) -> str:
        return (
            f"<Band {self.priority} flows={len(self.flows)} queued={self.queued_requests}"
            f" in_flight={self.in_flight}>"
        )


@final
class Registry:
    """The set of bands and flows, and their lifecycles."""

    def __init__(self, config: FlowControlConfig) -> None:
        self.config = config
        self.bands: dict[int, Band] = {}
        self.levels: list[Band] = []
        self.desired: frozenset[int] = frozenset()
        self._idle_flows: OrderedDict[Flow, float] = OrderedDict()
        self._idle_bands: OrderedDict[Band, float] = OrderedDict()
        for priority in config.bands:
            self._add_band(priority)
        self._add_band(0)

    # -- bands -----------------------------------------------------------------

    def _add_band(self, priority: int) -> Band:
        band = self.bands.get(priority)
        if band is not None:
            band.retiring = False
            return band
        band = Band(
            priority,
            self.config.template_for(priority),
            static=priority in self.config.bands,
        )
        self.bands[priority] = band
        levels = list(self.levels)
        keys = [-b.priority for b in levels]
        levels.insert(bisect.bisect(keys, -priority), band)
        self.levels = levels  # copy-on-write: never disturb an iteration
        return band

    def _remove_band(self, band: Band) -> None:
        for flow in band.flows.values():
            self._idle_flows.pop(flow, None)
        band.flows.clear()
        self._idle_bands.pop(band, None)
        del self.bands[band.priority]
        self.levels = [b for b in self.levels if b is not band]

    def protected(self, band: Band) -> bool:
        """Static, 0 and desired bands are never removed."""
        return band.static or band.priority == 0 or band.priority in self.desired

    def band_for(self, priority: int) -> tuple[Band, bool]:
        """The band serving `priority`, creating it if dynamic bands are on.

        Returns:
            the band, and True when the request falls back to band 0.
        """
        band = self.bands.get(priority)
        dynamic = self.config.dynamic_bands
        if band is not None and (dynamic or not band.retiring):
            return band, False
        if dynamic:
            return self._add_band(priority), False
        return self.bands[0], True

    # -- flows -----------------------------------------------------------------

    def flow_for(self, band: Band, flow_id: str) -> Flow:
        """The flow of `flow_id` in `band`, created on first use and marked busy."""
        flow = band.flows.get(flow_id)
        if flow is None:
            if not band.flows:
                self._idle_bands.pop(band, None)
            key = FlowKey(flow_id, band.priority)
            flow = band.flows[flow_id] = Flow(key, band, self.config.weight_for(flow_id))
        else:
            self._idle_flows.pop(flow, None)
        return flow

    def forget_if_unused(self, band: Band) -> None:
        """Drop `band` if a request that was just refused created it.

        A band with no flow that is neither protected nor on its idle clock can only be
        one `band_for` created for that request; keeping it would leave a band nothing
        ever collects.
        """
        if not band.flows and not self.protected(band) and band not in self._idle_bands:
            self._remove_band(band)

    def _band_idle_since(self, band: Band, since: float) -> None:
        """Start `band`'s idle clock. The map stays ordered by time (oldest first) by
        never going back in time: a band may be collected late, never early."""
        bands = self._idle_bands
        if bands:
            since = max(since, next(reversed(bands.values())))
        bands[band] = since

    def settle(self, flow: Flow, now: float) -> None:
        """Called after `flow` lost a queued or in-flight request."""
        if flow.in_flight or waiting(flow):
            return
        band = flow.band
        if band.retiring and band.drained:
            self._remove_band(band)
        elif self.bands.get(band.priority) is band:
            self._idle_flows[flow] = now

    # -- collection and reconciliation -------------------------------------------

    def next_collection_at(self) -> float | None:
        """When the next flow or band becomes collectable, or None."""
        at: float | None = None
        if self._idle_flows:
            since = next(iter(self._idle_flows.values()))
            at = since + self.config.flow_idle_timeout
        if self._idle_bands:
            since = next(iter(self._idle_bands.values()))
            band_at = since + self.config.band_idle_timeout
            at = band_at if at is None else min(at, band_at)
        return at

    def collect(self, now: float) -> None:
        """Remove the flows and bands whose idle time is up."""
        flow_timeout = self.config.flow_idle_timeout
        idle_flows = self._idle_flows
        while idle_flows:
            flow, since = next(iter(idle_flows.items()))
            # The same sum as `next_collection_at`: `now - since` may round below it.
            if since + flow_timeout > now:
                break
            idle_flows.popitem(last=False)
            band = flow.band
            del band.flows[flow.key.id]
            if not band.flows and not self.protected(band):
                # The band's clock runs from its last request, like its flows' clocks.
                self._band_idle_since(band, since)
        band_timeout = self.config.band_idle_timeout
        idle_bands = self._idle_bands
        while idle_bands:
            band, since = next(iter(idle_bands.items()))
            if since + band_timeout > now:
                break
            idle_bands.popitem(last=False)
            if not band.flows and not self.protected(band):
                self._remove_band(band)

    def reconcile(self, desired: Iterable[int]) -> None:
        """Follow a desired set of priorities; see `FlowController.reconcile_priorities`."""
        self.desired = frozenset(desired)
        for priority in sorted(self.desired, reverse=True):
            band = self._add_band(priority)
            self._idle_bands.pop(band, None)
        for band in list(self.levels):
            if self.protected(band):
                band.retiring = False
            elif band.drained:
                self._remove_band(band)
            else:
                band.retiring = True

    def reconfigure(self, config: FlowControlConfig, now: float) -> list[Band]:
        """Adopt a new config. Returns the bands whose policies changed (to rebuild).

        A band that stops being static becomes dynamic: if it has no flow its idle
        clock starts now; otherwise it starts when its last flow is collected.
        """
        self.config = config
        for priority in config.bands:
            self._add_band(priority)
        changed: list[Band] = []
        for band in self.levels:
            for flow in band.flows.values():
                flow.weight = config.weight_for(flow.key.id)
            band.static = band.priority in config.bands
            new = config.template_for(band.priority)
            old, band.config = band.config, new
            if (old.ordering, old.fairness, old.queue_name) != (
                new.ordering,
                new.fairness,
                new.queue_name,
            ):
                changed.append(band)
            if band.static:
                self._idle_bands.pop(band, None)
            elif not band.flows and not self.protected(band) and band not in self._idle_bands:
                self._band_idle_since(band, now)
        return changed
