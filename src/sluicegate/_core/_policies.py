"""Ordering (inside a flow) and fairness (between the flows of a band) policies.

Each kind has one read-only table from name to factory; config validation resolves
names there and lists the known ones on a miss. Policies are Protocols so a plugin
need not import sluicegate.

Costs: ordering is O(1) per ticket; both fairness policies select in O(1) amortised
(round-robin) or O(log active flows) (global-strict), never a scan of registered flows.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, final

from ._queues import PRIORITY_CONFIGURABLE

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._registry import Flow
    from ._ticket import Ticket

#: Dead heap entries tolerated beyond the live ones before a rebuild.
_HEAP_SLACK: Final = 32
_NO_KEY: Final = object()

__all__ = [
    "FAIRNESS_POLICIES",
    "ORDERING_POLICIES",
    "Edf",
    "FairnessPolicy",
    "Fcfs",
    "GlobalStrict",
    "OrderingPolicy",
    "RoundRobin",
    "SloDeadline",
    "TokenFair",
]


class OrderingPolicy(Protocol):
    """**Protocol:** order the requests of one flow.

    `sort_key` MUST end with the ticket's `seq` so that keys are unique and ties go
    to the earlier arrival. It is computed once, at admission.
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]

    def sort_key(self, ticket: Ticket, /) -> Any: ...


@final
class Fcfs:
    """First come, first served by logical arrival (the moment of submission)."""

    name: ClassVar[str] = "fcfs"
    requires: ClassVar[frozenset[str]] = frozenset()

    def sort_key(self, ticket: Ticket, /) -> Any:
        # seq grows with arrival time on the one loop, so it *is* the arrival order.
        return ticket.seq


@final
class Edf:
    """Earliest deadline first; deadline = arrival + TTL, no TTL sorts last."""

    name: ClassVar[str] = "edf"
    requires: ClassVar[frozenset[str]] = frozenset({PRIORITY_CONFIGURABLE})

    def sort_key(self, ticket: Ticket, /) -> Any:
        deadline = ticket.expires_at
        return (math.inf if deadline is None else deadline, ticket.seq)


@final
class SloDeadline:
    """Earliest SLO deadline first; deadline = arrival + the request's target (e.g. TTFT)."""

    name: ClassVar[str] = "slo-deadline"
    requires: ClassVar[frozenset[str]] = frozenset({PRIORITY_CONFIGURABLE})

    def sort_key(self, ticket: Ticket, /) -> Any:
        deadline = ticket.slo_at
        return (math.inf if deadline is None else deadline, ticket.seq)


class FairnessPolicy(Protocol):
    """**Protocol:** choose which flow of a band is served next.

    The band calls `head_changed` whenever a flow's head changes, including when the
    flow becomes non-empty or empty, except after a dispatch, where it calls
    `dispatched` instead. `charge` reports service given to a flow, already divided by
    the flow's weight: positive at dispatch (the estimate), either sign when actual usage
    corrects it, and possibly for a flow that is not backlogged. `select` MUST return a
    flow with a non-empty queue, or None when the band has no queued request, and MUST
    NOT mutate the flow (except `flow.fair_counter`, which is the policy's own).
    """

    name: ClassVar[str]

    def head_changed(self, flow: Flow, /) -> None: ...

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None: ...

    def charge(self, flow: Flow, service: float, /) -> None: ...

    def select(self) -> Flow | None: ...


@final
class GlobalStrict:
    """The best head across all flows by the band's ordering (ties: earlier arrival).

    A heap of (head sort key, flow) with lazy invalidation: an entry is live while it
    names its flow's current head (`_heads`). Keys are unique, so the order is
    deterministic. Heads change without a pass (expiry, cancellation) for as long as
    the pool stays saturated, so the heap is rebuilt from the live heads whenever dead
    entries outnumber them: its size stays within twice the backlogged flows.
    """

    name: ClassVar[str] = "global-strict"
    __slots__ = ("_heads", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[Any, Flow]] = []
        #: The sort key of each backlogged flow's head, as last pushed.
        self._heads: dict[Flow, Any] = {}

    def head_changed(self, flow: Flow, /) -> None:
        head = flow.queue.peek()
        heads = self._heads
        if head is None:
            heads.pop(flow, None)
            return
        key = head._sort_key
        if heads.get(flow, _NO_KEY) == key:
            return
        heads[flow] = key
        heap = self._heap
        if len(heap) >= 2 * len(heads) + _HEAP_SLACK:
            heap[:] = [(k, f) for f, k in heads.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (key, flow))

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None:
        self.head_changed(flow)

    def charge(self, flow: Flow, service: float, /) -> None:
        pass  # counts requests, not tokens

    def select(self) -> Flow | None:
        heap = self._heap
        while heap:
            key, flow = heap[0]
            head = flow.queue.peek()
            if head is not None and head._sort_key == key:
                return flow
            heapq.heappop(heap)
            if head is None:
                self._heads.pop(flow, None)
        return None


@final
class RoundRobin:
    """One dispatch per backlogged flow per turn, in order of becoming backlogged.

    A ring of (flow, turn) entries with lazy removal: an entry is live while it names
    its flow's current turn (`_members`). A flow emptied by expiry or cancellation loses
    its turn at once; the ring is rebuilt when dead entries outnumber live ones, so it
    stays bounded while saturated, when no pass runs to skip them.
    """

    name: ClassVar[str] = "round-robin"
    __slots__ = ("_members", "_ring", "_turns")

    def __init__(self) -> None:
        self._ring: deque[tuple[Flow, int]] = deque()
        self._members: dict[Flow, int] = {}
        self._turns = 0

    def _enter(self, flow: Flow) -> None:
        self._turns += 1
        self._members[flow] = self._turns
        ring = self._ring
        if len(ring) >= 2 * len(self._members) + _HEAP_SLACK:
            members = self._members
            self._ring = ring = deque(e for e in ring if members.get(e[0]) == e[1])
        ring.append((flow, self._turns))

    def head_changed(self, flow: Flow, /) -> None:
        if not len(flow.queue):
            self._members.pop(flow, None)
        elif flow not in self._members:
            self._enter(flow)

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None:
        ring = self._ring
        if ring and ring[0][0] is flow:
            ring.popleft()
            if len(flow.queue):
                self._enter(flow)
            else:
                self._members.pop(flow, None)

    def charge(self, flow: Flow, service: float, /) -> None:
        pass  # one turn per request, whatever it costs

    def select(self) -> Flow | None:
        ring = self._ring
        members = self._members
        while ring:
            flow, turn = ring[0]
            if members.get(flow) == turn:
                if len(flow.queue):
                    return flow
                del members[flow]  # emptied by an eviction we were not told of
            ring.popleft()
        return None


@final
class TokenFair:
    """Weighted token fairness: serve the backlogged flow with the least service.

    Each flow has a counter of weighted token service divided by its weight (VTC,
    OSDI'24, with weights). A flow that becomes backlogged is lifted to the smallest
    counter among backlogged flows (or to the band's virtual time when none is), so idle
    time banks no credit and a returning flow cannot starve the others. The virtual time
    only moves forward, even when a correction refunds an over-estimate. Selection is a
    heap of (counter, sequence, flow) with lazy invalidation: O(log active flows).
    """

    name: ClassVar[str] = "token-fair"
    __slots__ = ("_active", "_heap", "_seq", "virtual_time")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Flow]] = []
        self._active: set[Flow] = set()
        self._seq = 0
        #: Never decreases: the floor a returning flow is lifted to.
        self.virtual_time = 0.0

    def _push(self, flow: Flow) -> None:
        self._seq += 1
        heap = self._heap
        if len(heap) >= 2 * len(self._active) + _HEAP_SLACK:
            # Usage reports re-push a backlogged flow each time: rebuild from the live
            # counters instead of letting one entry per report pile up.
            # Every backlogged flow has an entry naming its counter; keep one each.
            live: dict[Flow, tuple[float, int, Flow]] = {}
            for entry in heap:
                counter, _, owner = entry
                if owner in self._active and owner.fair_counter == counter:
                    live.setdefault(owner, entry)
            heap[:] = live.values()
            heapq.heapify(heap)
        heapq.heappush(heap, (flow.fair_counter, self._seq, flow))

    def _min_active(self) -> float | None:
        heap = self._heap
        while heap:
            counter, _, flow = heap[0]
            if flow in self._active and flow.fair_counter == counter:
                return counter
            heapq.heappop(heap)
        return None

    def head_changed(self, flow: Flow, /) -> None:
        if not len(flow.queue):
            self._active.discard(flow)
            return
        if flow in self._active:
            return
        floor = self._min_active()
        floor = self.virtual_time if floor is None else max(floor, self.virtual_time)
        flow.fair_counter = max(flow.fair_counter, floor)
        self._active.add(flow)
        self._push(flow)

    def dispatched(self, flow: Flow, ticket: Ticket, /) -> None:
        if len(flow.queue):
            self._push(flow)
        else:
            self._active.discard(flow)

    def charge(self, flow: Flow, service: float, /) -> None:
        flow.fair_counter += service
        if flow in self._active:
            self._push(flow)

    def select(self) -> Flow | None:
        while (counter := self._min_active()) is not None:
            flow = self._heap[0][2]
            if len(flow.queue):
                self.virtual_time = max(self.virtual_time, counter)
                return flow
            self._active.discard(flow)  # emptied by an eviction we were not told of
        return None


ORDERING_POLICIES: Final[Mapping[str, Callable[[], OrderingPolicy]]] = MappingProxyType(
    {"fcfs": Fcfs, "edf": Edf, "slo-deadline": SloDeadline}
)
FAIRNESS_POLICIES: Final[Mapping[str, Callable[[], FairnessPolicy]]] = MappingProxyType(
    {"global-strict": GlobalStrict, "round-robin": RoundRobin, "token-fair": TokenFair}
)
