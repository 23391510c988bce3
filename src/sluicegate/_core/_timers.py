"""The deadlines of queued tickets: their TTL and their no-endpoint deadline.

One heap of (deadline, seq, kind, ticket) entries with lazy removal (the heapq docs'
"Priority Queue Implementation Notes"): a ticket leaving the queue leaves its entries
behind, and an entry counts only while its ticket is QUEUED and still has that very
deadline (a requeued ticket gets new ones). Dead entries are dropped at the top as
they surface, and the heap is rebuilt whenever they outnumber the live ones, so one
long waiter at the top, or mass cancellation, cannot make it grow without bound.

Sans-I/O: the scheduler asks for the earliest deadline (the shell arms one timer at
it) and, at a time it is given, for what is due.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Final, final

from ._ticket import State

if TYPE_CHECKING:
    from ._ticket import Ticket

__all__ = ["NO_ENDPOINT", "TTL", "Deadlines"]

#: The ticket waited its whole TTL.
TTL: Final = 0
#: The ticket waited its no-endpoint TTL; evicted only if the pool has no backend then.
NO_ENDPOINT: Final = 1
#: Entries tolerated beyond four per queued ticket (at most two of them live) before a
#: rebuild: dead ones then outnumber the live ones.
_SLACK: Final = 64


@final
class Deadlines:
    """The heap of deadlines of queued tickets."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Ticket]] = []

    def __len__(self) -> int:
        """Entries held, dead ones included (bounded by the compaction)."""
        return len(self._heap)

    def arm(self, ticket: Ticket, no_endpoint_ttl: float | None, now: float, queued: int) -> None:
        """Push the deadlines of a ticket just queued (`queued` tickets are queued now)."""
        heap = self.compact(queued)
        if ticket._expires_at is not None:
            heapq.heappush(heap, (ticket._expires_at, ticket._seq, TTL, ticket))
        if no_endpoint_ttl is not None:
            at = ticket._no_endpoint_at = now + no_endpoint_ttl
            heapq.heappush(heap, (at, ticket._seq, NO_ENDPOINT, ticket))

    def compact(self, queued: int) -> list[tuple[float, int, int, Ticket]]:
        """Rebuild the heap from its live entries if the dead ones outnumber them."""
        heap = self._heap
        if len(heap) > 4 * queued + _SLACK:
            # In place: `pop_due` may be called again on this very list mid-expiry.
            heap[:] = [e for e in heap if e[3]._state is State.QUEUED]
            heapq.heapify(heap)
        return heap

    def earliest(self) -> float | None:
        """The earliest deadline of a queued ticket, or None (drops dead entries on top)."""
        heap = self._heap
        while heap and heap[0][3]._state is not State.QUEUED:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> tuple[int, Ticket] | None:
        """The next (kind, ticket) whose deadline is at or before `now`, or None."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, kind, ticket = heapq.heappop(heap)
            if ticket._state is not State.QUEUED:
                continue
            if at != (ticket._expires_at if kind == TTL else ticket._no_endpoint_at):
                continue  # a deadline the ticket no longer has (it was requeued)
            return kind, ticket
        return None

    def clear(self) -> None:
        self._heap.clear()
