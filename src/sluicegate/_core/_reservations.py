"""Retry-After as a promise: places held in a full band for the flows it refused.

Why. Under sustained overload a band at its ``max_requests`` stays full: a client that
waits the advised Retry-After competes with every fresh arrival for the few places that
free up, so its retry gets in about as often as the band's outflow over its inflow,
whatever the delay (10-14 % at 2x overload, docs/benchmarks.md part 6).

What. When a band's ``max_requests`` refuses an arrival, the refusal reserves a place for
its flow (priority, fairness id) and advises the delay ``T`` after which the place is
due (`advised_delay`): the time the band needs to let out enough requests for this place
to be free -- ``queued + reserved + 1 - max_requests`` of them, the places promised
before it included -- at the rate requests were dispatched from the band's queue over
the last `OUTFLOW_WINDOW` seconds, times `SAFETY`, rounded up to whole seconds. (The
band's service rate, in flight over mean service time, overstates it: its dispatches
also wait for higher bands and the band's utilisation ceiling. Evictions free places
too, but in bursts -- a wave of TTL expiries -- that promised places no one could keep;
left out, they only make the promise conservative.) From then on:

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
entries in all, live or used. When no promise can be made (nothing left the band for
`OUTFLOW_WINDOW` seconds, a delay beyond `MAX_DELAY`, a full table) the refusal promises
nothing and advises no delay (``refused``; `QueueFullError.retry` says why, and the
gateway sends no Retry-After: it is only ever a promise). Counts conserve:
``made == honoured + lapsed + outstanding``.

Which arrival redeems it. A flow is often a whole tenant, whose fresh requests would
take the places promised to its retries. So a refusal may carry a *claim*: a value
naming the request (the gateway's is a digest of the request body, which a retry sends
unchanged: no client cooperation). A promise made with a claim is redeemed only by an
arrival of the flow with the same claim; one made without (library callers that give
none) by any arrival of the flow. The claim is a callable, asked only when the flow
holds a promise in the band or is being refused, so requests pay nothing otherwise.

Sans-I/O: every step takes ``now``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from .._errors import QueueFullError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._config import FlowControlConfig
    from ._registry import Band

    #: What names a request for its promise (see the module doc); None: nothing.
    Claim = Callable[[], Hashable] | None

__all__ = [
    "EARLY",
    "HORIZON",
    "MAX_DELAY",
    "OUTFLOW_WINDOW",
    "RESERVED",
    "SAFETY",
    "STARVED",
    "TABLE_FULL",
    "Reservation",
    "Reservations",
    "advised_delay",
]

#: Seconds before its due time a reservation may already be redeemed (client timers
#: and the network are not exact; the gateway rounds the delay up to whole seconds).
EARLY: Final = 0.25
#: The longest delay advised (Retry-After), in seconds.
MAX_DELAY: Final = 60
#: Factor on the delay: the band's outflow varies (it waits for higher bands), and a
#: promise kept late is better than a retry refused. (Pacing by the window's slowest
#: 2.5 s span instead kept no more promises and made a seventh as many: part 6.)
SAFETY: Final = 1.5
#: Seconds over which the rate requests leave a band's queue is counted.
OUTFLOW_WINDOW: Final = 10.0
_UNASKED: Final = object()
#: `QueueFullError.retry`: a place is promised after its delay; or why not.
RESERVED: Final = "reserved"
HORIZON: Final = "horizon"
STARVED: Final = "starved"
TABLE_FULL: Final = "table_full"


def advised_delay(to_drain: int, rate: float | None) -> int | None:
    """Whole seconds (at least 1) after which `to_drain` more requests have left a band
    draining `rate` requests a second; None when the rate is unknown."""
    if rate is None or rate <= 0.0:
        return None
    return max(1, math.ceil(SAFETY * max(1, to_drain) / rate))


@final
@dataclass(slots=True, eq=False)
class Reservation:
    """One promised place: band `priority`, flow `flow_id`, redeemable in
    [`opens_at`, `closes_at`]."""

    priority: int
    flow_id: str
    opens_at: float
    closes_at: float
    #: The request it is for (None: any request of the flow).
    claim: object = None
    live: bool = True


@final
class Reservations:
    """The promised places of every band, with their counters."""

    def __init__(self, config: FlowControlConfig | None = None, limit: int = 10_000) -> None:
        #: The controller's configuration (`retry_reservations`, `retry_grace`); a
        #: `reconfigure` replaces it. None: promises on, a 2 s grace.
        self.config = config
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
        # priority -> when requests left its queue, over the last OUTFLOW_WINDOW seconds
        # (kept only for bands with a max_requests, the only ones that promise).
        self._left: dict[int, deque[float]] = {}

    def left(self, priority: int, now: float) -> None:
        """A request was dispatched from the queue of band `priority`."""
        times = self._left.get(priority)
        if times is None:
            times = self._left[priority] = deque()
        times.append(now)
        horizon = now - OUTFLOW_WINDOW
        while times[0] < horizon:
            times.popleft()

    def outflow(self, priority: int, now: float) -> float | None:
        """Requests a second dispatched from band `priority`'s queue lately, or None."""
        times = self._left.get(priority)
        horizon = now - OUTFLOW_WINDOW
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            self._left.pop(priority, None)
            return None
        return len(times) / OUTFLOW_WINDOW

    # -- the scheduler's three hooks ------------------------------------------------------

    def held_against(self, priority: int, flow_id: str, now: float, claim: Claim) -> int:
        """Places of band `priority` an arrival may not take (promised to others): 0 for
        an arrival that holds a due promise (it may take any free place)."""
        if not self.outstanding or (self.config is not None and not self.config.retry_reservations):
            return 0
        if self.due(priority, flow_id, now, claim) is not None:
            return 0
        return self.held(priority, now)

    def refusal(
        self, band: Band, flow_id: str, limit: int, now: float, claim: Claim
    ) -> QueueFullError:
        """The refusal of a full band: with `retry_reservations`, the delay to advise
        and, if it can, a promised place (`promise`)."""
        config = self.config
        message = f"band {band.priority} holds its max_requests={limit}"
        if config is not None and not config.retry_reservations:
            return QueueFullError(message)
        held = self.held(band.priority, now)
        delay, why = self.promise(
            band.priority,
            flow_id,
            now,
            band.queued_requests + held + 1 - limit,
            2.0 if config is None else config.retry_grace,
            claim,
        )
        if held:
            message += f" ({held} places promised to retries)"
        return QueueFullError(message, retry_after=delay, retry=why)

    def redeem(self, priority: int, flow_id: str, now: float, claim: Claim) -> None:
        """An admitted arrival uses up its due promise, if it has one."""
        if self.outstanding and (due := self.due(priority, flow_id, now, claim)) is not None:
            self.honour(due)

    # -- the table ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries held (live and used ones not yet dropped), at most `limit`."""
        return self._entries

    def held(self, priority: int, now: float) -> int:
        """Live reservations of band `priority` at `now` (lapsed ones dropped first)."""
        if priority not in self._heaps:
            return 0
        self._lapse(priority, now)
        return self._live.get(priority, 0)

    def due(
        self, priority: int, flow_id: str, now: float, claim: Claim = None
    ) -> Reservation | None:
        """The flow's earliest reservation in band `priority` redeemable at `now` by an
        arrival with `claim` (asked at most once, only if a claimed one is due)."""
        flows = self._flows.get(priority)
        if not flows or flow_id not in flows:
            return None
        self._lapse(priority, now)
        key: object = _UNASKED
        for reservation in flows.get(flow_id, ()):
            if reservation.opens_at - EARLY > now:
                continue
            if reservation.claim is None:
                return reservation
            if key is _UNASKED:
                key = None if claim is None else claim()
            if key == reservation.claim:
                return reservation
        return None

    def honour(self, reservation: Reservation) -> None:
        """Use up `reservation`: its flow got the place it was promised."""
        if not reservation.live:
            return
        self._drop(reservation)
        self.honoured += 1

    def promise(
        self, priority: int, flow_id: str, now: float, to_drain: int, grace: float, claim: Claim
    ) -> tuple[int | None, str]:
        """(the delay after which a place is promised, `RESERVED`), or (None, why not),
        for a refusal in band `priority` with `to_drain` requests to leave first (the
        promised ones counted).

        No promise when nothing was dispatched from the band for `OUTFLOW_WINDOW`
        seconds (``starved``: there is no rate to promise by), when
        the delay would exceed `MAX_DELAY` (``horizon``), or when the table is full
        (``table_full``). A refusal without a promise advises no delay: any guess would
        invite a retry into a band whose places are promised.
        """
        delay = advised_delay(to_drain, self.outflow(priority, now))
        if delay is None or delay > MAX_DELAY:
            self.refused += 1
            return None, STARVED if delay is None else HORIZON
        if self.reserve(priority, flow_id, now, delay, grace, claim):
            return delay, RESERVED
        return None, TABLE_FULL

    def reserve(
        self,
        priority: int,
        flow_id: str,
        now: float,
        delay: float,
        grace: float,
        claim: Claim = None,
    ) -> bool:
        """Promise band `priority` a place for `flow_id` (the request `claim` names)
        due in `delay` seconds and kept `grace` seconds after; False (nothing promised)
        when the table is full."""
        self._lapse(priority, now)
        if self._entries >= self.limit:
            self.refused += 1
            return False
        key = None if claim is None else claim()
        reservation = Reservation(priority, flow_id, now + delay, now + delay + grace, key)
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
