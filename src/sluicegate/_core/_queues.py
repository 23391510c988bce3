"""Per-flow queues. Removal is lazy: a removed ticket stays in the container until it
reaches the head, so `discard` is O(1) and no sweep is ever needed. Counts are exact
(`len()` counts live tickets only); a queue compacts itself when dead entries outnumber
live ones, so memory stays bounded under mass cancellation.

A ticket is live while its state is QUEUED. The scheduler calls `discard()` *before*
changing the state, so the queue can tell whether the head changed.
"""

from __future__ import annotations

import heapq
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Final, Protocol, final

from ._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._ticket import Ticket

__all__ = ["FIFO", "PRIORITY_CONFIGURABLE", "QUEUES", "FifoQueue", "HeapQueue", "Queue"]

#: Capability: the head is the oldest ticket by insertion.
FIFO: Final = "fifo"
#: Capability: the head is the ticket with the smallest `sort_key`.
PRIORITY_CONFIGURABLE: Final = "priority-configurable"

_COMPACT_SLACK: Final = 32


class Queue(Protocol):
    """**Protocol:** an unbounded queue of tickets for one flow.

    Capacity lives outside the queue. A queue MUST NOT change state on its own
    (no internal TTL): the scheduler's counters depend on it.
    """

    capabilities: ClassVar[frozenset[str]]

    def __len__(self) -> int: ...

    def push(self, ticket: Ticket, /) -> bool:
        """Add a ticket; return True if it became the head."""
        ...

    def push_front(self, ticket: Ticket, /) -> bool:
        """Put back a ticket that was dispatched from this queue (a requeue): ahead of
        what arrived after it. Return True if it became the head."""
        ...

    def peek(self) -> Ticket | None:
        """The head, or None when empty."""
        ...

    def pop(self) -> Ticket:
        """Remove and return the head. The queue must not be empty."""
        ...

    def discard(self, ticket: Ticket, /) -> bool:
        """Remove a live ticket; return True if it was the head."""
        ...

    def drain(self) -> list[Ticket]:
        """Remove and return every live ticket, head first."""
        ...

    def live(self) -> list[Ticket]:
        """Every live ticket, in no particular order, without removing any."""
        ...


@final
class FifoQueue:
    """Insertion order, O(1) everything."""

    capabilities: ClassVar[frozenset[str]] = frozenset({FIFO})
    __slots__ = ("_items", "_live")

    def __init__(self) -> None:
        self._items: deque[Ticket] = deque()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, ticket: Ticket, /) -> bool:
        self._items.append(ticket)
        self._live += 1
        return self._live == 1

    def push_front(self, ticket: Ticket, /) -> bool:
        self._items.appendleft(ticket)
        self._live += 1
        return True

    def peek(self) -> Ticket | None:
        items = self._items
        while items:
            head = items[0]
            if head._state is State.QUEUED:
                return head
            items.popleft()
        return None

    def pop(self) -> Ticket:
        head = self.peek()
        assert head is not None, "pop from an empty queue"
        self._items.popleft()
        self._live -= 1
        return head

    def discard(self, ticket: Ticket, /) -> bool:
        if self.peek() is ticket:
            self._items.popleft()
            self._live -= 1
            return True
        self._live -= 1
        if len(self._items) > 2 * self._live + _COMPACT_SLACK:
            self._items = deque(
                t for t in self._items if t._state is State.QUEUED and t is not ticket
            )
        return False

    def drain(self) -> list[Ticket]:
        live = self.live()
        self._items.clear()
        self._live = 0
        return live

    def live(self) -> list[Ticket]:
        return [t for t in self._items if t._state is State.QUEUED]


@final
class HeapQueue:
    """Smallest `sort_key` first, O(log n) push and pop."""

    capabilities: ClassVar[frozenset[str]] = frozenset({PRIORITY_CONFIGURABLE})
    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        # sort_key is unique per ticket (it ends with the arrival sequence), so the
        # ticket itself is never compared.
        self._heap: list[tuple[object, Ticket]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, ticket: Ticket, /) -> bool:
        heapq.heappush(self._heap, (ticket._sort_key, ticket))
        self._live += 1
        return self.peek() is ticket

    def push_front(self, ticket: Ticket, /) -> bool:
        # Its sort key is unchanged, so it goes back where its ordering puts it.
        return self.push(ticket)

    def peek(self) -> Ticket | None:
        heap = self._heap
        while heap:
            head = heap[0][1]
            if head._state is State.QUEUED:
                return head
            heapq.heappop(heap)
        return None

    def pop(self) -> Ticket:
        head = self.peek()
        assert head is not None, "pop from an empty queue"
        heapq.heappop(self._heap)
        self._live -= 1
        return head

    def discard(self, ticket: Ticket, /) -> bool:
        if self.peek() is ticket:
            heapq.heappop(self._heap)
            self._live -= 1
            return True
        self._live -= 1
        if len(self._heap) > 2 * self._live + _COMPACT_SLACK:
            self._heap = [
                e for e in self._heap if e[1]._state is State.QUEUED and e[1] is not ticket
            ]
            heapq.heapify(self._heap)
        return False

    def drain(self) -> list[Ticket]:
        live: list[Ticket] = []
        while self._heap:
            ticket = heapq.heappop(self._heap)[1]
            if ticket._state is State.QUEUED:
                live.append(ticket)
        self._live = 0
        return live

    def live(self) -> list[Ticket]:
        return [t for _, t in self._heap if t._state is State.QUEUED]


QUEUES: Final[Mapping[str, Callable[[], Queue]]] = MappingProxyType(
    {"fifo": FifoQueue, "heap": HeapQueue}
)
