"""Slot loans: a paused request lends its slot and gets one back on its own engine.

A paused request's continuation re-prefills only what its engine's prefix cache lost.
Queued again in its flow, a paused batch request waited behind every higher band, at 2x
load 10-20 s, then resumed on whichever engine freed a slot first, rarely its own:
~300-400 prompt tokens prefilled again per pause, 4.8-7.9 % of all tokens wasted. vLLM
puts a preempted request at the head of its waiting queue, on the same engine. So does a
loan: the pause gives the slot to the request that asked for room; the paused ticket
stays in flight in the flow controller (no charge refunded, no queue), bound to nothing;
a slot its *home* backend frees later goes back to it, ahead of lower bands, when
`may_take_back` says the band that pauses loses nothing by it (see `Pool`).

It falls back to queueing again (`requeue_and_wait`) when its home cannot give a slot
back: out of service, or no slot came back within its wait limit. Event driven: a slot
is given back from the detector's `on_release`, never by polling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, final

from ._saturation import binding_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import sluicegate as sg

    from ._saturation import Backend, _PoolDetector

__all__ = ["SlotLoans"]


@final
class SlotLoans:
    """The slots paused requests lent, per home backend, first lent first given back.

    Args:
        detector: the pool's detector (its `on_release` calls `freed`).
        may_take_back: whether a slot free on this backend may go back to a loan now
            (False while the band that pauses others needs it).
        holds_slot: the controller's `holds_slot`: a lent slot is not one demand
            headroom may count as reclaimable by pausing its holder.
    """

    def __init__(
        self,
        detector: _PoolDetector,
        may_take_back: Callable[[Backend, sg.Ticket], bool],
        holds_slot: Callable[[sg.Ticket, bool], None] | None = None,
    ) -> None:
        self.detector = detector
        self.may_take_back = may_take_back
        self.holds_slot = holds_slot
        self._owed: dict[Backend, deque[tuple[sg.Ticket, asyncio.Future[bool]]]] = {}
        #: Loans given back on the home backend, and those that fell back to a requeue.
        self.returned = 0
        self.fell_back = 0

    def lend(self, ticket: sg.Ticket) -> asyncio.Future[bool] | None:
        """Free the slot of the paused `ticket` (still in flight for the controller)
        and tell the controller; the future is True when the home backend gives a slot
        back (``ticket.assignment`` is bound there again), False to queue again. None:
        no loan (not bound, or its backend is out of service)."""
        binding = binding_of(ticket)
        if binding is None or not binding.backend.usable:
            return None
        binding.release()
        ticket.assignment = None
        if self.holds_slot is not None:
            self.holds_slot(ticket, False)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._owed.setdefault(binding.backend, deque()).append((ticket, future))
        self.detector.notify()
        return future

    def withdraw(self, future: asyncio.Future[bool]) -> None:
        """The borrower stopped waiting (client gone, timeout): forget its loan."""
        if not future.done():
            future.cancel()
        for backend, owed in self._owed.items():
            for entry in owed:
                if entry[1] is future:
                    owed.remove(entry)
                    if not owed:
                        del self._owed[backend]
                    return

    def owed(self, backend: Backend) -> int:
        """Loans waiting for a slot on `backend`."""
        owed = self._owed.get(backend)
        return 0 if owed is None else sum(1 for _, f in owed if not f.done())

    def freed(self, backend: Backend) -> None:
        """A request on `backend` ended: give its slot to the oldest loan there."""
        owed = self._owed.get(backend)
        while owed and owed[0][1].done():
            owed.popleft()
        if not owed:
            return
        if backend.usable and self.detector.backends.get(backend.url) is backend:
            if self.detector.has_room(backend) and self.may_take_back(backend, owed[0][0]):
                ticket, future = owed.popleft()
                ticket.assignment = backend.bind()
                if self.holds_slot is not None:
                    self.holds_slot(ticket, True)
                future.set_result(True)
                self.returned += 1
            # Else full, or the band that pauses needs this one: the loan waits for
            # the next (at most its wait limit, see `Preemption.wait_again`).
            return
        # Out of service or removed: no slot will come back from it; queue again.
        while owed:
            _, future = owed.popleft()
            if not future.done():
                future.set_result(False)
                self.fell_back += 1

    def describe(self) -> dict[str, int]:
        """Counts for /debug/flowcontrol."""
        return {
            "lent": sum(self.owed(b) for b in self._owed),
            "returned": self.returned,
            "fell_back": self.fell_back,
        }
