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

When no such request exists, `make_room` pauses a running one instead, where the pool
has `preemption: resume` and the `PausePolicy` allows it (see `_pause.py`): its upstream
request is closed, its client's stream stays open, and it lends its slot: the next slot
its own backend frees goes back to it when the top band loses nothing by it (slot loans,
`_affinity.py`), else after `loan_wait_s` its continuation is queued at the head of its
flow. The lowest priority first, then the one sent last.

As a last resort, where the pool has `evict_streams: true`, `make_room` evicts a running
stream that cannot be paused: one whose client already has part of the answer, of
priority below `evict_below_priority` and below the arriving request's. Its handler task
is cancelled (never while its last bytes go out), its upstream request is closed, its
client's stream ends with an OpenAI-shaped SSE `error` event (`end_evicted`), and its
ticket is released: the slot goes to the highest request waiting. The lowest priority
first, then the one sent last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, final

from ._errors import GatewayError
from ._upstream import sse_error_event

if TYPE_CHECKING:
    from collections.abc import Callable

    import sluicegate as sg

    from ._affinity import SlotLoans
    from ._pause import Resumable
    from ._proxy import Exchange
    from ._resume import PausePolicy

__all__ = ["LOAN_WAIT_S", "Preemption"]

#: The longest a paused request waits for its home backend's slot (then it queues again,
#: and its continuation lands on any backend). Queued again, a paused batch request waits
#: 10-20 s at 2x load anyway; at 2 s, 2 of 9 loans in a bursty 2x run timed out during a
#: 10 s burst and re-prefilled ~590 tokens each (2.5 % of all tokens), at 10 s none did.
LOAN_WAIT_S = 10.0

_log = logging.getLogger("sluicegate.gateway")


@final
class _InFlight:
    """One streamed request in flight that may be taken back."""

    __slots__ = ("evicted", "ex", "order", "preempted", "resumable", "task", "ticket")

    def __init__(
        self,
        ticket: sg.Ticket,
        ex: Exchange,
        task: asyncio.Task[object],
        order: int,
        resumable: Resumable | None,
    ):
        self.ticket = ticket
        self.ex = ex
        self.task = task
        self.order = order
        self.preempted = False
        #: Chosen for eviction, by a request of this priority (else None).
        self.evicted: int | None = None
        self.resumable = resumable

    @property
    def unstarted(self) -> bool:
        """Nothing was generated for it yet (a requeue loses no work)."""
        r = self.resumable
        if r is not None:
            # `tokens` last: it decodes the events passed on so far (see `StreamSplicer`).
            return not self.ex.started and r.splicer.pauses == 0 and r.splicer.tokens == 0
        return not self.ex.started


@final
class _Tracked:
    """`Preemption.track`'s block for a request that may be chosen: listed while it runs."""

    __slots__ = ("_entry", "_live", "_task")

    def __init__(
        self,
        live: dict[asyncio.Task[object], _InFlight],
        task: asyncio.Task[object],
        entry: _InFlight,
    ) -> None:
        self._live, self._task, self._entry = live, task, entry

    def __enter__(self) -> object:
        self._live[self._task] = self._entry
        return None

    def __exit__(self, *exc: object) -> None:
        self._live.pop(self._task, None)


#: `Preemption.track`'s block for a request that cannot be chosen (shared: no state).
_UNTRACKED: Final = contextlib.nullcontext()


@final
class Preemption:
    """The preemptible requests of one pool, and the counts of what was done.

    Args:
        controller: the pool's flow controller.
        max_requeues: how often one request may be taken back (then it keeps its slot).
        enabled: False turns preemptive requeue off (requests are only tracked).
        pause_policy: who may be paused and how often (`preemption: resume`); None
            turns pausing off.
        move_to: the pool detector's `move_to` (prefix-cache affinity on resume).
        evict_below: streams of a lower priority may be evicted as a last resort
            (`evict_streams: true`); None turns eviction off.
        frees_slot: the pool detector's `frees_slot`: victims whose backend then has
            room come first (one on a backend over its capacity frees nothing).
    """

    def __init__(
        self,
        controller: sg.FlowController,
        *,
        max_requeues: int = 1,
        enabled: bool = True,
        pause_policy: PausePolicy | None = None,
        move_to: Callable[[sg.Ticket, str], bool] | None = None,
        evict_below: int | None = None,
        loans: SlotLoans | None = None,
        frees_slot: Callable[[sg.Ticket], bool] | None = None,
    ) -> None:
        self.controller = controller
        #: Where a paused request lends its slot (None: it queues again at once).
        self.loans = loans
        #: The longest a loan waits for its home backend (then it queues again).
        self.loan_wait_s = LOAN_WAIT_S
        #: Sends a resumed request back to its backend when that one has room.
        self.move_to = move_to
        #: Whether taking a request back leaves its backend a usable slot.
        self.frees_slot = frees_slot
        self.max_requeues = max_requeues
        self.enabled = enabled
        self.pause_policy = pause_policy
        self.evict_below = evict_below
        #: Streams ended with an error event to make room, by the evicted priority.
        self.evictions: Counter[int] = Counter()
        #: Pauses and resumes so far, by the paused request's priority.
        self.pauses: Counter[int] = Counter()
        self.resumes: Counter[int] = Counter()
        self._live: dict[asyncio.Task[object], _InFlight] = {}
        self._paused: set[Resumable] = set()
        self._order = 0
        #: Requests taken back and queued again.
        self.requeued = 0
        #: Preemptions asked for when no request could be taken back.
        self.no_victim = 0
        #: The highest priority tracked so far: only it pauses others (see `make_room`).
        self.top_priority: int | None = None

    def track(
        self,
        ticket: sg.Ticket,
        ex: Exchange,
        *,
        stream: bool,
        resumable: Resumable | None = None,
    ) -> contextlib.AbstractContextManager[object]:
        """While the block runs, the request may be chosen as a victim (streams, and
        any request that may be paused). A plain context manager, not a generator's:
        it is entered once per request."""
        if self.top_priority is None or ticket.priority > self.top_priority:
            self.top_priority = ticket.priority
        evictable = stream and self.evict_below is not None and ticket.priority < self.evict_below
        if (
            resumable is None
            and not evictable
            and (not stream or ticket.requeues >= self.max_requeues)
        ):
            return _UNTRACKED
        task = asyncio.current_task()
        if task is None:
            return _UNTRACKED
        self._order += 1
        return _Tracked(self._live, task, _InFlight(ticket, ex, task, self._order, resumable))

    def make_room(self, priority: int) -> bool:
        """Take back one lower-priority request whose answer has not started, else
        pause a running one that may be paused, else (opt-in) evict a running stream;
        False if none exists."""
        victim = self._requeue_victim(priority) if self.enabled else None
        if victim is not None:
            victim.preempted = True
            if victim.resumable is not None:
                victim.resumable.requested = True
            victim.task.cancel()
            return True
        # A pause costs the engine the victim's prefill again when its continuation
        # lands where its blocks are not cached, so only the top band pauses: the one
        # the protection is for (measured: letting standard (p0) arrivals pause batch
        # too paused in bursts, 6 in 0.1 s, and wasted 5-8 % of the tokens at 2x).
        top = self.top_priority
        victim = None if top is not None and priority < top else self._pause_victim(priority)
        if victim is None:
            return self._evict(priority)
        resumable = victim.resumable
        assert resumable is not None
        resumable.requested = True
        # Waiting for upstream bytes: stop it now. Sending to its client: it stops
        # after the send (it checks `requested`), so no client write is cut.
        if resumable.reading:
            victim.task.cancel()
        return True

    def _requeue_victim(self, priority: int) -> _InFlight | None:
        victim: _InFlight | None = None
        for entry in self._live.values():
            if (
                entry.preempted
                or entry.ticket.priority >= priority
                or entry.ticket.requeues >= self.max_requeues
                or (entry.resumable is not None and entry.resumable.requested)
                or not entry.unstarted  # last: the dearest test
            ):
                continue
            if victim is None or self._better(entry, victim):
                victim = entry
        return victim

    def _better(self, entry: _InFlight, other: _InFlight) -> bool:
        """`_before`, but a victim that leaves its backend a slot first (measured: while
        the adaptive limit learned the batch, a requeue of a request queued inside an
        over-full engine freed nothing, and the interactive arrival waited 0.2-0.3 s)."""
        frees = self.frees_slot
        if frees is not None and (a := frees(entry.ticket)) != frees(other.ticket):
            return a
        return _before(entry, other)

    def _pause_victim(self, priority: int) -> _InFlight | None:
        victim: _InFlight | None = None
        for entry in self._live.values():
            if self._pausable(entry, priority) and (victim is None or self._better(entry, victim)):
                victim = entry
        return victim

    def _pausable(self, entry: _InFlight, priority: int) -> bool:
        """May `entry` be paused now for a request of `priority`?"""
        policy, resumable = self.pause_policy, entry.resumable
        return not (
            policy is None
            or resumable is None
            or resumable.requested
            or entry.preempted
            or entry.evicted is not None
            or not policy.may_pause_for(entry.ticket.priority, priority)
            or resumable.cuts >= policy.max_pauses
            or not resumable.splicer.can_pause
        )

    def _evict(self, priority: int) -> bool:
        """Evict a running stream for a request of `priority` (opt-in, last resort)."""
        victim = self._evict_victim(priority)
        if victim is None:
            self.no_victim += 1
            return False
        victim.evicted = priority
        victim.task.cancel()
        return True

    def _evict_victim(self, priority: int) -> _InFlight | None:
        """A stream whose client has part of its answer, below the threshold and the
        arrival, that cannot be paused (a pause loses nothing, so it comes first)."""
        below = self.evict_below
        if below is None:
            return None
        victim: _InFlight | None = None
        for entry in self._live.values():
            ex, resumable = entry.ex, entry.resumable
            if (
                entry.preempted
                or entry.evicted is not None
                or entry.ticket.priority >= min(below, priority)
                or not ex.sse
                or not ex.started
                or ex.finishing
                or ex.disconnected
                or (resumable is not None and resumable.requested)
                or self._pausable(entry, priority)
            ):
                continue
            if victim is None or _before(entry, victim):
                victim = entry
        return victim

    async def end_evicted(self, ex: Exchange, resumable: Resumable | None) -> bool:
        """In the victim's handler, on CancelledError: True if it was our eviction (then
        the cancellation is consumed and the client's stream ended with an SSE `error`
        event), False if it must propagate."""
        task = asyncio.current_task()
        entry = self._live.get(task) if task is not None else None
        if entry is None or entry.evicted is None or ex.disconnected:
            return False
        assert task is not None
        if task.uncancel() != 0:  # someone else cancelled it too
            return False
        self._live.pop(task, None)
        priority = entry.ticket.priority
        self.evictions[priority] += 1
        err = GatewayError(
            503,
            f"the stream was ended to make room for higher-priority work (priority "
            f"{priority} < {entry.evicted}); the answer so far is incomplete",
            type="service_unavailable",
            code="evicted",
        )
        pool, cls = ex.record.pool, ex.record.classification
        _log.info(
            "flow-control evicted pool=%s flow=%s priority=%d for_priority=%d",
            pool.name if pool is not None else "-", cls.fairness_id if cls is not None else "-",
            priority, entry.evicted,
        )  # fmt: skip
        if resumable is not None:
            # The splicer passed only whole events: the error event follows a whole one.
            await ex.finish(
                resumable.splicer.end_with_error(err.message, error_type=err.type, code=err.code)
            )
        else:
            await ex.chunk(sse_error_event(err))
            await ex.finish()
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

    async def wait_again(
        self, ticket: sg.Ticket, ex: Exchange, resumable: Resumable | None = None
    ) -> sg.Ticket:
        """Queue the taken-back (or paused) ticket again and wait for its next dispatch.

        A paused request whose client already has part of the answer and that cannot
        be dispatched again (TTL, drain) has its stream ended with an SSE `error` event
        before the error propagates.
        """
        if resumable is None or not resumable.paused:
            self.requeued += 1
            return await self.controller.requeue_and_wait(ticket)
        self.pauses[ticket.priority] += 1
        self._paused.add(resumable)
        try:
            if not await self._borrow(ticket):
                ticket = await self.controller.requeue_and_wait(ticket)
        except Exception as exc:
            await resumable.end_with_error(ex, exc)
            raise
        finally:
            self._paused.discard(resumable)
        self.resumes[ticket.priority] += 1
        resumable.resumed()
        if resumable.home is not None and self.move_to is not None:
            self.move_to(ticket, resumable.home)
        return ticket

    async def _borrow(self, ticket: sg.Ticket) -> bool:
        """Lend the paused ticket's slot and wait for its home backend to give one back
        (True: bound there again). At most its TTL (or `loan_wait_s`): then, or when the
        home cannot give one back, False (queue it again)."""
        future = None if self.loans is None else self.loans.lend(ticket)
        if future is None:
            return False
        assert self.loans is not None
        limit = self.loan_wait_s
        try:
            async with asyncio.timeout(min(ticket.ttl or limit, limit)):
                return await future
        except TimeoutError:
            return False
        finally:
            self.loans.withdraw(future)

    def describe(self) -> dict[str, Any]:
        """Counts for /debug/flowcontrol."""
        return {
            "preemptible_in_flight": sum(
                1
                for e in self._live.values()
                if e.unstarted and e.ticket.requeues < self.max_requeues
            ),
            "requests_requeued": self.requeued,
            "preemptions_without_victim": self.no_victim,
            "max_requeues": self.max_requeues,
            "pause": "off" if self.pause_policy is None else "resume",
            "pauses": dict(self.pauses),
            "resumes": dict(self.resumes),
            "paused_requests": [r.describe() for r in self._paused],
            "eviction": "off" if self.evict_below is None else f"below {self.evict_below}",
            "evictions": dict(self.evictions),
            "loans": None if self.loans is None else self.loans.describe(),
        }


def _before(entry: _InFlight, other: _InFlight) -> bool:
    """The lowest priority first, then the one sent last (the least work lost)."""
    return (entry.ticket.priority, -entry.order) < (other.ticket.priority, -other.order)
