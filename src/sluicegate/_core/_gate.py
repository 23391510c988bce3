"""Whether a band may take a slot now: the questions the dispatch step asks the gate.

The gate (saturation detector) answers for the pool: endpoints, saturation,
utilization, free slots. This module adds what the core knows about the bands: a
band's `max_utilization`, the free slots higher bands keep for their demand
(`_headroom.py`), and the untested slots a lower band should probe with. A failing
detector is isolated here: the answer errs on the safe side and the failure is
counted by the scheduler's fault sink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._headroom import DemandHeadroom
    from ._registry import Band, Registry
    from ._saturation import SaturationDetector
    from ._ticket import Ticket

__all__ = ["SlotGate"]


@final
class SlotGate:
    """The gate's answers for one band, with the core's headroom rules on top.

    Args:
        registry: the bands.
        headroom: the demand headroom kept for higher bands.
        fault: counts and reports a detector failure (the scheduler's `_fault`).
    """

    __slots__ = ("_fault", "_headroom", "_registry")

    def __init__(
        self,
        registry: Registry,
        headroom: DemandHeadroom,
        fault: Callable[[str, BaseException | None], None],
    ) -> None:
        self._registry = registry
        self._headroom = headroom
        self._fault = fault

    def allows(self, gate: SaturationDetector, band: Band | None = None) -> bool:
        """Whether the gate has endpoints, is not saturated and (for `band`) is below the
        band's `max_utilization`. A failing gate counts as saturated."""
        try:
            if not gate.has_endpoints() or gate.is_saturated():
                return False
            ceiling = 1.0 if band is None else band.config.max_utilization
            return ceiling >= 1.0 or gate.utilization() < ceiling
        except Exception as error:
            self._fault("saturation detector failed; treating the pool as saturated", error)
            return False

    def probe_for_lower(self, gate: SaturationDetector, band: Band) -> bool:
        """Whether every free slot is a probe (it may put its request in an engine's own
        queue, see the adaptive detector) and a lower band has work to test it with."""
        levels = self._registry.levels
        below = levels[levels.index(band) + 1 :]
        if not any(b.queued_requests > b.held_requests for b in below):
            return False  # checked first: the detector's answer walks its backends
        probe_only = getattr(gate, "probe_only", None)
        if probe_only is None:
            return False
        try:
            return bool(probe_only())
        except Exception as error:  # isolated like the detector's other answers
            self._fault("saturation detector failed in probe_only; ignoring it", error)
            return False

    def headroom_allows(
        self,
        gate: SaturationDetector,
        band: Band,
        head: Ticket | None,
        reclaimable: int,
        preemptible_queued: int,
    ) -> bool:
        """Whether `band` (its request `head`, None if not known) leaves the bands above
        it the free slots their demand needs.

        The top band's reserve need not be idle: a slot held by preemptible work is
        one the top band gets back at once (a pause), so it counts as free for the top
        band, and preemptible work of a lower band may fill that reserve down to the
        few slots kept idle for arrivals that would otherwise each cost a pause.
        """
        slots = getattr(gate, "slots", None)
        levels = self._registry.levels
        if slots is None or not self._registry.config.demand_headroom or band is levels[0]:
            return True
        try:
            probe_for = getattr(gate, "probe_for", None)
            if probe_for is not None and probe_for(band.priority):
                return True  # it takes an untested slot, which higher bands leave alone
            counted: tuple[float, float] | None = slots()
        except Exception as error:
            self._fault("saturation detector failed; treating the pool as saturated", error)
            return False
        if counted is None:
            return True
        free, capacity = counted
        top = levels[0].priority
        if head is not None and head._preemptible:
            return self._preemptible_allowed(band.priority, free, capacity)
        return self._headroom.allows(
            band.priority,
            free,
            capacity,
            reclaimable=reclaimable,
            top=top,
            preemptible_waiting=preemptible_queued > 0 and self._preemptible_next(band),
        )

    def _preemptible_next(self, band: Band) -> bool:
        """Whether a band below `band` would dispatch a preemptible ticket next (only
        then is the top band's remembered reserve left to such work: a head that is
        not preemptible would leave it idle)."""
        levels = self._registry.levels
        for lower in levels[levels.index(band) + 1 :]:
            if lower.queued_requests <= lower.held_requests:
                continue
            try:
                flow = lower.fairness.select()
            except Exception:
                continue
            head = None if flow is None else flow.queue.peek()
            if head is not None and head._preemptible:
                return True
        return False

    def leaves_headroom(
        self, gate: SaturationDetector, priority: int, preemptible: bool = False
    ) -> bool:
        """Whether one more request in flight at `priority` (any level, a band or not)
        leaves the bands above it the free slots their demand needs; a `preemptible`
        one may use the top band's reserve down to its idle part, as at dispatch."""
        slots = getattr(gate, "slots", None)
        if slots is None or not self._registry.config.demand_headroom:
            return True
        counted: tuple[float, float] | None = slots()
        if counted is None:
            return True
        levels = self._registry.levels
        if not preemptible or not levels or priority >= levels[0].priority:
            return self._headroom.allows(priority, *counted)
        return self._preemptible_allowed(priority, *counted)

    def _preemptible_allowed(self, priority: int, free: float, capacity: float) -> bool:
        """Whether preemptible work at `priority` (below the top band) may take a slot.
        Bands between it and the top cannot take their slots back: their reserve stays
        idle, unless each is backlogged (its arrivals queue behind its own work, not for
        a free slot)."""
        top = self._registry.levels[0].priority
        middle = not all(
            b.queued_requests > b.held_requests
            for b in self._registry.levels
            if priority < b.priority < top
        )
        return self._headroom.allows_preemptible(priority, top, free, capacity, middle)

    def has_endpoints(self, gate: SaturationDetector) -> bool:
        """The gate's answer; a failing gate counts as having endpoints (nothing is
        evicted for the detector's own failure)."""
        try:
            return gate.has_endpoints()
        except Exception as error:
            self._fault("saturation detector failed in has_endpoints", error)
            return True
