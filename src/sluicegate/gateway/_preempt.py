"""Preemptive requeue: make room for a higher-priority request by taking back a lower one
whose answer has not started.

When a request is about to wait and its pool has no free slot, `Preemption.make_room`
picks a victim among the pool's streamed requests in flight: lower priority, **no byte
sent to its client yet** (the relay sends the response headers with the first chunk),
requeued fewer than `max_requeues` times; the lowest priority first, then the one sent
last (the least work lost). Its handler task is cancelled; the handler absorbs exactly
that cancellation (`absorb`), the relay's upstream request is closed (the engine stops
working on it), and the ticket goes back to the head of its flow's queue
(`FlowController.requeue_and_wait`). Its slot goes to the highest request waiting. The
victim's client sees nothing but a later first token.

The decision "make room now" lives in `make_room`, so another way of making room (a
pause of a running stream, a shed stream) can be added next to requeue.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Iterator

    import sluicegate as sg

    from ._proxy import Exchange

__all__ = ["Preemption"]


@final
class _InFlight:
    """One streamed request in flight that may be taken back."""

    __slots__ = ("ex", "order", "preempted", "task", "ticket")

    def __init__(self, ticket: sg.Ticket, ex: Exchange, task: asyncio.Task[object], order: int):
        self.ticket = ticket
        self.ex = ex
        self.task = task
        self.order = order
        self.preempted = False


@final
class Preemption:
    """The preemptible requests of one pool, and the counts of what was done.

    Args:
        controller: the pool's flow controller.
        max_requeues: how often one request may be taken back (then it keeps its slot).
        enabled: False turns preemption off (requests are only tracked).
    """

    def __init__(
        self, controller: sg.FlowController, *, max_requeues: int = 1, enabled: bool = True
    ) -> None:
        self.controller = controller
        self.max_requeues = max_requeues
        self.enabled = enabled
        self._live: dict[asyncio.Task[object], _InFlight] = {}
        self._order = 0
        #: Requests taken back and queued again.
        self.requeued = 0
        #: Preemptions asked for when no request could be taken back.
        self.no_victim = 0

    @contextlib.contextmanager
    def track(self, ticket: sg.Ticket, ex: Exchange, *, stream: bool) -> Iterator[None]:
        """While the block runs, the request may be chosen as a victim (streams only)."""
        task = asyncio.current_task()
        if not stream or task is None or ticket.requeues >= self.max_requeues:
            yield
            return
        self._order += 1
        self._live[task] = _InFlight(ticket, ex, task, self._order)
        try:
            yield
        finally:
            self._live.pop(task, None)

    def make_room(self, priority: int) -> bool:
        """Take back one lower-priority request whose answer has not started, if any."""
        if not self.enabled:
            return False
        victim: _InFlight | None = None
        for entry in self._live.values():
            if (
                entry.preempted
                or entry.ex.started
                or entry.ticket.priority >= priority
                or entry.ticket.requeues >= self.max_requeues
            ):
                continue
            if victim is None or (entry.ticket.priority, -entry.order) < (
                victim.ticket.priority,
                -victim.order,
            ):
                victim = entry
        if victim is None:
            self.no_victim += 1
            return False
        victim.preempted = True
        victim.task.cancel()
        return True

    def absorb(self, ex: Exchange) -> bool:
        """In the victim's handler, on CancelledError: True if it was our preemption
        (then the cancellation is consumed), False if it must propagate."""
        task = asyncio.current_task()
        entry = self._live.get(task) if task is not None else None
        if entry is None or not entry.preempted or ex.disconnected or ex.started:
            return False
        assert task is not None
        if task.uncancel() != 0:  # someone else cancelled it too
            return False
        self._live.pop(task, None)
        return True

    async def wait_again(self, ticket: sg.Ticket) -> sg.Ticket:
        """Queue the taken-back ticket again and wait for its next dispatch."""
        self.requeued += 1
        return await self.controller.requeue_and_wait(ticket)

    def describe(self) -> dict[str, int]:
        """Counts for /debug/flowcontrol."""
        return {
            "preemptible_in_flight": sum(
                1 for e in self._live.values() if not e.ex.started and not e.preempted
            ),
            "requests_requeued": self.requeued,
            "preemptions_without_victim": self.no_victim,
            "max_requeues": self.max_requeues,
        }
