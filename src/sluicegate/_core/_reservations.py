"""Retry-After as a promise: places held in a full band for the flows it refused.

Why. Under sustained overload a band at its ``max_requests`` stays full: a client that
waits the advised Retry-After competes with every fresh arrival for the few places that
free up, so its retry gets in about as often as the band's outflow over its inflow,
whatever the delay (10-14 % at 2x overload, docs/benchmarks.md part 6).

What. When a band's ``max_requests`` refuses an arrival, the refusal reserves a place for
its flow (priority, fairness id) and advises the delay ``T`` after which the place is
due (`advised_delay`): the time the band needs to let out enough requests for this place
to be free -- ``queued + reserved + 1 - max_requests`` of them, the places promised
before it included -- at the band's own drain rate (its requests in flight over their
mean service time, Little's law), rounded up to whole seconds. From then on:

* a *fresh* arrival in the band is admitted only into a place nobody holds:
  ``queued + reserved < max_requests`` -- the band's inflow of new work drops while
  promises are outstanding, so the queue drains towards them;
* an arrival of a flow that holds a *due* reservation (its window
  ``[refused + T - EARLY, refused + T + grace]`` contains now) may take any free place,
  ``queued < max_requests``, and uses up that reservation (honoured).

Promises may outnumber the band's places: they are spread out in time, one more place
to drain each, so a refused flow learns when the band can take it instead of competing
again with every fresh arrival. Then every fresh arrival is refused (and promised a
later place) until the promises are honoured or lapse: under overload the band becomes a
queue kept by the clients, in Retry-After order.

Nothing is ever evicted for a reservation, so no higher-priority request is displaced by
a lower one and band limits hold. A reservation nobody uses lapses at the end of its
window: it is dropped lazily, the next time its band is looked at (an arrival or a
refusal there; no sweeper); until then its place stays empty, the price of a client
that does not come back. The table is bounded: no delay beyond `MAX_DELAY`, and `limit`
entries in all, live or used. When no promise can be made (no band drain rate yet,
a delay beyond `MAX_DELAY`, a full table) the refusal advises the delay as before and
promises nothing (``refused``). Counts conserve:
``made == honoured + lapsed + outstanding``.

A reservation is per flow, not per request: the gateway cannot tell a retry from a new
request, so any request of the flow arriving in the window redeems it.

Sans-I/O: every step takes ``now``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Final, final

__all__ = ["EARLY", "MAX_DELAY", "Reservation", "Reservations", "advised_delay"]

#: Seconds before its due time a reservation may already be redeemed (client timers
#: and the network are not exact; the gateway rounds the delay up to whole seconds).
EARLY: Final = 0.25
#: The longest delay advised (Retry-After), in seconds.
MAX_DELAY: Final = 60


def advised_delay(to_drain: int, rate: float | None) -> int | None:
    """Whole seconds (at least 1) after which `to_drain` more requests have left a band
    draining `rate` requests a second; None when the rate is unknown or the delay would
    exceed `MAX_DELAY` (then nothing is promised)."""
    if rate is None or rate <= 0.0:
        return None
    seconds = max(1, math.ceil(max(1, to_drain) / rate))
    return seconds if seconds <= MAX_DELAY else None


@final
@dataclass(slots=True, eq=False)
class Reservation:
    """One promised place: band `priority`, flow `flow_id`, redeemable in
    [`opens_at`, `closes_at`]."""

    priority: int
    flow_id: str
    opens_at: float
    closes_at: float
    live: bool = True


@final
class Reservations:
    """The promised places of every band, with their counters."""

    def __init__(self, limit: int = 10_000) -> None:
        #: Entries (live or used, not yet dropped) allowed in all: bounds the memory.
        self.limit = limit
        self.made = 0
        self.honoured = 0
        self.lapsed = 0
        #: Refusals that promised nothing: the band or the table was full.
        self.refused = 0
        self.outstanding = 0
        self._entries = 0
        self._seq = 0
        # priority -> heap of (closes_at, seq, reservation): lapsing order.
        self._heaps: dict[int, list[tuple[float, int, Reservation]]] = {}
        # priority -> flow id -> its live reservations, in the order they were made.
        self._flows: dict[int, dict[str, list[Reservation]]] = {}
        self._live: dict[int, int] = {}

    def __len__(self) -> int:
        """Entries held (live and used ones not yet dropped), at most `limit`."""
        return self._entries

    def held(self, priority: int, now: float) -> int:
        """Live reservations of band `priority` at `now` (lapsed ones dropped first)."""
        if priority not in self._heaps:
            return 0
        self._lapse(priority, now)
        return self._live.get(priority, 0)

    def due(self, priority: int, flow_id: str, now: float) -> Reservation | None:
        """The flow's earliest reservation in band `priority` redeemable at `now`."""
        flows = self._flows.get(priority)
        if not flows or flow_id not in flows:
            return None
        self._lapse(priority, now)
        for reservation in flows.get(flow_id, ()):
            if reservation.opens_at - EARLY <= now:
                return reservation
        return None

    def honour(self, reservation: Reservation) -> None:
        """Use up `reservation`: its flow got the place it was promised."""
        if not reservation.live:
            return
        self._drop(reservation)
        self.honoured += 1

    def reserve(self, priority: int, flow_id: str, now: float, delay: float, grace: float) -> bool:
        """Promise band `priority` a place for `flow_id` due in `delay` seconds and kept
        `grace` seconds after; False (nothing promised) when the table is full."""
        self._lapse(priority, now)
        if self._entries >= self.limit:
            self.refused += 1
            return False
        reservation = Reservation(priority, flow_id, now + delay, now + delay + grace)
        self._seq += 1
        heapq.heappush(
            self._heaps.setdefault(priority, []), (reservation.closes_at, self._seq, reservation)
        )
        self._flows.setdefault(priority, {}).setdefault(flow_id, []).append(reservation)
        self._live[priority] = self._live.get(priority, 0) + 1
        self._entries += 1
        self.outstanding += 1
        self.made += 1
        return True

    def _lapse(self, priority: int, now: float) -> None:
        """Drop the entries of band `priority` whose window has closed."""
        heap = self._heaps.get(priority)
        while heap and heap[0][0] < now:
            _, _, reservation = heapq.heappop(heap)
            self._entries -= 1
            if reservation.live:
                self._drop(reservation)
                self.lapsed += 1
        if heap is not None and not heap:
            del self._heaps[priority]

    def _drop(self, reservation: Reservation) -> None:
        """Take a live reservation out of its flow's list and the live counts (its heap
        entry stays until its window closes, counted in `len`)."""
        reservation.live = False
        priority = reservation.priority
        flows = self._flows[priority]
        mine = flows[reservation.flow_id]
        mine.remove(reservation)
        if not mine:
            del flows[reservation.flow_id]
            if not flows:
                del self._flows[priority]
        self._live[priority] -= 1
        if not self._live[priority]:
            del self._live[priority]
        self.outstanding -= 1
