"""Admission that looks ahead: the wait estimate, early rejection and displacement.

Wait estimate. When the pool is saturated, every completion frees a slot that goes to
the highest band with work waiting, so a request arriving in band ``b`` waits for the
requests queued in ``b`` and the bands above it, drained at the pool's completion rate
``mu`` (from `DemandHeadroom`: completions over its window, bounded below by Little's
law). ``wait = position / mu`` with ``position = queued ahead + 1``. The estimate is
optimistic on purpose: higher-priority arrivals during the wait would cut in ahead, and
are not counted, so early rejection errs on the side of admitting.

Early rejection. A request whose deadline (its SLO when given, else its TTL) is shorter
than the estimated wait by more than the margin -- ``wait > deadline x (1 + margin)``
-- is refused at once (`DeadlineUnreachableError`, ``RejectedDeadline``, 429) instead
of waiting its whole TTL for a 503. There is no estimate, so no early rejection, until
the pool has finished `MIN_DRAIN_SAMPLES` requests in the window.

Displacement. When a global limit (`max_requests`, `max_bytes`) would refuse an
arrival, queued requests of strictly lower priority are evicted (``EvictedDisplaced``)
to make room: the lowest band first, the newest request first inside it (it has
invested the least waiting). The victims are chosen before anything is evicted: if
all of them together cannot make room, nothing is evicted and the arrival is refused
as before. A band limit is never met by displacement: a band holds only requests of
its own priority, none strictly lower, so a full band refuses the arrival.

Sans-I/O: every step takes ``now``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .._errors import DeadlineUnreachableError, QueueFullError
from ._reservations import MAX_DELAY

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._types import FlowKey
    from ._config import FlowControlConfig
    from ._headroom import DemandHeadroom
    from ._registry import Band
    from ._tenants import Tenant
    from ._ticket import Ticket

__all__ = [
    "advised_seconds",
    "deadline_budget",
    "displacement_victims",
    "early_rejection",
    "estimate_wait",
    "limit_refusal",
    "shortfall",
]


def limit_refusal(
    band: Band,
    tenant: Tenant | None,
    size: int,
    held: int = 0,
    full: Callable[[int], QueueFullError] | None = None,
) -> QueueFullError | None:
    """The queue limit of the tenant or of the band that an arrival would break, or None.

    Checked before the global limits: those alone can be met by displacement. `held`
    places of the band are promised to others (`_reservations.py`); `full(limit)` makes
    the refusal by the band's `max_requests` (the one that may promise a place).
    """
    if tenant is not None and (limit := tenant.max_queued) is not None and tenant.queued >= limit:
        return QueueFullError(f"tenant {tenant.id} holds its max_queued={limit}")
    config = band.config
    if (limit := config.max_requests) is not None and band.queued_requests + held >= limit:
        if full is not None:
            return full(limit)
        return QueueFullError(f"band {band.priority} holds its max_requests={limit}")
    if (limit := config.max_bytes) is not None and band.queued_bytes + size > limit:
        return QueueFullError(
            f"band {band.priority} would exceed max_bytes={limit} "
            f"({band.queued_bytes} queued + {size})"
        )
    return None


def early_rejection(
    config: FlowControlConfig,
    key: FlowKey,
    estimate: tuple[float | None, int],
    now: float,
    expires_at: float | None,
    slo_at: float | None,
) -> DeadlineUnreachableError | None:
    """The early rejection of an arrival whose deadline cannot be met given the work
    ahead (`estimate` = its estimated wait and queue position), or None."""
    wait, position = estimate
    budget = deadline_budget(expires_at, slo_at, now)
    if not config.early_reject or wait is None or budget is None:
        return None
    if wait <= budget * (1.0 + config.early_reject_margin):
        return None
    which = "SLO" if slo_at is not None else "TTL"
    return DeadlineUnreachableError(
        f"{key} cannot start within its {which} ({budget:.3f} s): about "
        f"{wait:.3f} s of work is queued ahead of it (position {position})",
        wait_s=wait,
        position=position,
        # When the work ahead of it now will have drained to within its deadline.
        retry_after=advised_seconds(wait - budget),
    )


def advised_seconds(wait: float) -> int:
    """A wait estimate as a Retry-After: whole seconds, at least 1, at most `MAX_DELAY`."""
    return max(1, min(MAX_DELAY, math.ceil(wait)))


def estimate_wait(
    levels: Sequence[Band],
    priority: int,
    headroom: DemandHeadroom,
    in_flight: int,
    reclaimable: int = 0,
) -> tuple[float | None, int]:
    """(estimated seconds until a new request at `priority` is dispatched, its position
    in the queue: everything waiting at its priority or above, plus one).

    The wait is None while the drain rate is unknown. The top band's first
    `reclaimable` positions wait for no completion: each takes a slot that preemptible
    work of a lower band gives back at once (the gateway pauses it), so only the
    positions beyond them drain at the pool's rate, for the top band and for the bands
    below it alike. Counting them as completions made every top-band request with a
    tight SLO look late by one completion time (~40 ms in part 6): refused, then served
    at once in the shadow run.
    """
    position = 1
    for level in levels:
        if level.priority < priority:
            break
        position += level.queued_requests
    rate = headroom.drain_rate(in_flight)
    if rate is None:
        return None, position
    ahead = position
    if reclaimable and levels:
        top = levels[0].queued_requests + (priority >= levels[0].priority)
        ahead -= min(reclaimable, top)
    return ahead / rate, position


def deadline_budget(expires_at: float | None, slo_at: float | None, now: float) -> float | None:
    """Seconds the request may wait: to its SLO deadline when given, else its TTL."""
    at = slo_at if slo_at is not None else expires_at
    return None if at is None else max(0.0, at - now)


def displacement_victims(
    levels: Sequence[Band],
    priority: int,
    need_requests: int,
    need_bytes: int,
) -> list[Ticket] | None:
    """Queued tickets of priority below `priority` whose eviction frees at least
    `need_requests` requests and `need_bytes` bytes: lowest band first, newest first.

    None when all of them together are not enough (then nothing may be evicted).
    """
    victims: list[Ticket] = []
    freed_requests = freed_bytes = 0
    for band in reversed(levels):
        if freed_requests >= need_requests and freed_bytes >= need_bytes:
            break
        if band.priority >= priority:
            break
        if not band.queued_requests:
            continue
        queued = [t for flow in band.flows.values() for t in flow.queue.live()]
        queued.sort(key=lambda t: t._seq, reverse=True)
        for ticket in queued:
            if freed_requests >= need_requests and freed_bytes >= need_bytes:
                break
            victims.append(ticket)
            freed_requests += 1
            freed_bytes += ticket._size
    if freed_requests >= need_requests and freed_bytes >= need_bytes:
        return victims
    return None


def shortfall(limit: int | None, held: int, adding: int) -> int:
    """How much must leave for `held + adding` to fit under `limit` (0: it fits)."""
    if limit is None:
        return 0
    return max(0, held + adding - limit)
