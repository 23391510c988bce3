"""Statistics of the bands and flows: exact counters and windowed fairness figures.

It reads the registry (bands, flows, the service log) and nothing else: the scheduler's
own counters go into the snapshot where the scheduler builds it (`Scheduler.statistics`),
so this module knows nothing of the decision step.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from .._types import BandStatistics, FlowKey, FlowStatistics
from ._tenants import waiting

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._registry import Band, Flow, Registry

__all__ = ["band_statistics", "flow_snapshot", "jain"]


def band_statistics(
    registry: Registry, now: float | None, top: int | None = None
) -> tuple[dict[int, BandStatistics], dict[FlowKey, FlowStatistics]]:
    """Every band's snapshot and the flows' snapshots, by priority and by key.

    Args:
        now: the current time, for the windowed fairness figures (None: omit them).
        top: include only the `top` largest flows (most queued, then most in flight);
            None = every flow.
    """
    bands: dict[int, BandStatistics] = {}
    flows: dict[FlowKey, FlowStatistics] = {}
    window = registry.config.fairness_window
    for band in registry.levels:
        jain, gap = _fairness(band, window, now)
        cfg = band.config
        bands[band.priority] = BandStatistics(
            priority=band.priority,
            queued_requests=band.queued_requests,
            queued_bytes=band.queued_bytes,
            in_flight=band.in_flight,
            flows=len(band.flows),
            max_requests=cfg.max_requests,
            max_bytes=cfg.max_bytes,
            dynamic=not band.static,
            retiring=band.retiring,
            ordering=cfg.ordering,
            fairness=cfg.fairness,
            fallback_requests=band.fallback_requests,
            jain_index=jain,
            max_service_gap=gap,
        )
        if top is None:
            for flow in band.flows.values():
                flows[flow.key] = _flow_statistics(flow)
    if top:
        # One pass over counters; a snapshot (which reads the queue) only for the chosen.
        every = (f for band in registry.levels for f in band.flows.values())
        for flow in heapq.nlargest(top, every, key=_size):
            flows[flow.key] = _flow_statistics(flow)
    return bands, flows


def _fairness(band: Band, window: float, now: float | None) -> tuple[float | None, float | None]:
    """Jain's index and the largest service gap over the window, among backlogged flows."""
    if now is None:
        return None, None
    horizon = now - window
    served: dict[Flow, float] = {}
    for start, bucket in band.service_log:
        if start >= horizon:  # whole buckets: the window is exact to a bucket's width
            for flow, service in bucket.items():
                served[flow] = served.get(flow, 0.0) + service
    candidates = [f for f in band.flows.values() if waiting(f) or f.last_backlogged >= horizon]
    if len(candidates) < 2:
        return None, None
    xs = [served.get(f, 0.0) for f in candidates]
    return jain(xs), max(xs) - min(xs)


def jain(xs: Sequence[float]) -> float | None:
    """Jain's index ``(sum x)^2 / (n * sum x^2)`` of non-negative values: 1 when all are
    equal, 1/n when one gets everything; None when all are zero (nothing to compare).
    The project's one implementation (`sluicegate.testbed.jain_index` wraps it)."""
    squares = sum(x * x for x in xs)
    if not squares:
        return None
    total = sum(xs)
    return total * total / (len(xs) * squares)


def flow_snapshot(registry: Registry, priority: int, flow_id: str) -> FlowStatistics | None:
    """One flow's snapshot, found by key in O(1); None if there is no such flow."""
    band = registry.bands.get(priority)
    flow = None if band is None else band.flows.get(flow_id)
    return None if flow is None else _flow_statistics(flow)


def _size(flow: Flow) -> tuple[int, int]:
    return waiting(flow), flow.in_flight


def _flow_statistics(flow: Flow) -> FlowStatistics:
    return FlowStatistics(
        key=flow.key,
        queued_requests=waiting(flow),
        queued_bytes=flow.queued_bytes,
        in_flight=flow.in_flight,
        oldest_arrival=min((t._arrival for t in flow.queue.live()), default=None),
        weight=flow.weight,
        input_tokens=flow.input_tokens,
        output_tokens=flow.output_tokens,
        service=flow.service,
    )
