"""A request's record inside the controller, from submission to release.

Invariants:

* A ticket exists only for an admitted request: it is created once its band and flow
  are known (a rejected request leaves no ticket, no flow and no band behind), so its
  flow is never missing.
* `state` only moves forward: QUEUED -> DISPATCHED -> RELEASED, or QUEUED -> FINISHED
  (evicted), or straight to DISPATCHED (dispatched on arrival). The one way back is
  `Scheduler.requeue` (DISPATCHED -> QUEUED, preemption).
* `outcome` is set exactly once, when the state leaves QUEUED; the exceptions are
  `Scheduler.revoke`, which turns a dispatch nobody received into EvictedCancelled
  before anyone could observe it, and `Scheduler.requeue`, which clears it.

The public surface is read-only (properties over private slots) except `assignment`,
which belongs to the saturation detector; the underscored slots belong to the core and
its shell (`_controller.py`), which write them directly.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, final

if TYPE_CHECKING:
    from .._types import FlowKey, Outcome
    from ._registry import Flow

__all__ = ["State", "Ticket"]


class State(enum.IntEnum):
    NEW = 0
    QUEUED = 1
    DISPATCHED = 2
    RELEASED = 3
    FINISHED = 4


class _Releaser(Protocol):
    def _release(self, ticket: Ticket, /) -> None: ...

    def _record_usage(
        self, ticket: Ticket, input_tokens: int | None, output_tokens: int | None, final: bool, /
    ) -> None: ...


@final
class Ticket:
    """A request admitted by a flow controller.

    A caller receives its ticket once the request is dispatched; the request then
    counts as in flight until `release()` is called (or the `admit()` block ends).
    Tickets are made by the controller, never by callers. Every attribute is read-only
    but `assignment`.

    Attributes:
        key: the flow the request was submitted under.
        priority: the band that served it (differs from ``key.priority`` only when
            dynamic bands are off and the request fell back to band 0).
        size: the request's size in bytes, as given at admission.
        seq: its submission number: unique, increasing with arrival (the tie-break of
            every ordering).
        arrival: loop time of the submission (its logical arrival).
        expires_at: loop time its TTL ends while it waits, or None (no TTL).
        slo_at: loop time of its SLO deadline (for `slo-deadline`), or None.
        ttl: seconds it may wait (0 without a deadline); a requeued ticket waits it again.
        state: where it is in its life (queued, dispatched, released, finished).
        outcome: how it left the queue (`Outcome`), or None while queued.
        dispatched_at: loop time of the dispatch, or None.
        queue_time: seconds between arrival and dispatch, or None.
        eta: estimated queue wait (seconds) when it was queued; None if dispatched at
            once or no drain rate was known yet (see `_admission.py`).
        requeues: times it was taken back from flight and queued again (preemption).
        released: True once its in-flight slot was given back.
        input_tokens: input tokens charged for fairness (estimate, then actual).
        output_tokens: output tokens charged for fairness (estimate, then actual).
        sort_key: its key in its flow's queue, from the band's ordering policy (for
            queue and fairness plugins).
        assignment: free for the saturation detector (e.g. the backend it chose); the
            one attribute anyone may write.
    """

    __slots__ = (
        "__weakref__",
        "_arrival",
        "_dispatched_at",
        "_eta",
        "_expires_at",
        "_flow",
        "_handed_over",
        "_input_tokens",
        "_key",
        "_no_endpoint_at",
        "_outcome",
        "_output_tokens",
        "_owner",
        "_preemptible",
        "_priority",
        "_requeues",
        "_reserve_held",
        "_seq",
        "_size",
        "_slo_at",
        "_sort_key",
        "_state",
        "_ttl",
        "_usage_known",
        "_waiter",
        "assignment",
    )

    def __init__(
        self,
        key: FlowKey,
        flow: Flow,
        size: int,
        arrival: float,
        seq: int,
        *,
        expires_at: float | None,
        slo_at: float | None,
    ) -> None:
        """A ticket of `flow`, whose band serves it. Made by the scheduler only, which
        sets the token estimates and `eta` before anyone sees it."""
        self._key = key
        self._flow = flow
        self._priority = flow.band.priority
        self._size = size
        self._arrival = arrival
        self._seq = seq
        self._expires_at = expires_at
        self._ttl = 0.0 if expires_at is None else expires_at - arrival
        self._slo_at = slo_at
        #: When it is evicted if the pool still has no backend (no_endpoint_ttl).
        self._no_endpoint_at: float | None = None
        self._sort_key: Any = seq
        self._state = State.NEW
        self._outcome: Outcome | None = None
        self._dispatched_at: float | None = None
        #: The shell's waiter (an asyncio.Future); opaque to the core.
        self._waiter: Any = None
        #: True once the caller received it (a dispatch it never received is revoked).
        self._handed_over = False
        self._input_tokens = 0
        self._output_tokens = 0
        #: True once a final output count was reported (`record_usage`).
        self._usage_known = False
        self._requeues = 0
        #: Its caller takes its slot back at once for the top band (pause, requeue):
        #: it may run in slots demand headroom keeps for that band (`Scheduler`).
        self._preemptible = False
        #: Counted in the scheduler's `preemptible_in_flight` while dispatched.
        self._reserve_held = False
        self._eta: float | None = None
        self._owner: _Releaser | None = None
        self.assignment: Any = None

    @property
    def key(self) -> FlowKey:
        return self._key

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def size(self) -> int:
        return self._size

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def arrival(self) -> float:
        return self._arrival

    @property
    def expires_at(self) -> float | None:
        return self._expires_at

    @property
    def slo_at(self) -> float | None:
        return self._slo_at

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def state(self) -> State:
        return self._state

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    @property
    def dispatched_at(self) -> float | None:
        return self._dispatched_at

    @property
    def eta(self) -> float | None:
        return self._eta

    @property
    def requeues(self) -> int:
        return self._requeues

    @property
    def preemptible(self) -> bool:
        """Whether its caller gives its slot back at once when the pool's top band needs
        it (pause or requeue; `enqueue_and_wait(preemptible=True)`, changed by
        `requeue_and_wait`). Such a request may use the free slots demand headroom keeps
        for the top band."""
        return self._preemptible

    @property
    def input_tokens(self) -> int:
        return self._input_tokens

    @property
    def output_tokens(self) -> int:
        return self._output_tokens

    @property
    def sort_key(self) -> Any:
        return self._sort_key

    @property
    def queue_time(self) -> float | None:
        """Seconds between arrival and dispatch, or None if not dispatched."""
        if self._dispatched_at is None:
            return None
        return self._dispatched_at - self._arrival

    @property
    def released(self) -> bool:
        """True once the in-flight slot was given back."""
        return self._state is State.RELEASED

    def release(self) -> None:
        """Give the in-flight slot back. Idempotent; a no-op unless dispatched."""
        if self._state is State.DISPATCHED and self._owner is not None:
            self._owner._release(self)

    def record_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        final: bool = True,
    ) -> None:
        """Report the request's actual token usage so far (running totals).

        Call it as often as you like, e.g. per streamed chunk and once with the final
        `usage`; each call replaces the previous figures, and the difference to what was
        charged (the estimate at dispatch) is charged or refunded to the flow.
        Pass ``final=False`` for a running count: only final output counts feed the
        flow's output estimate, so a stream cut short does not bias it.
        Ignored before dispatch. Works after `release()` too.

        Raises:
            ValueError: a count is negative or not an int.
        """
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self._owner is not None and self._state in (State.DISPATCHED, State.RELEASED):
            self._owner._record_usage(self, input_tokens, output_tokens, final)

    def __repr__(self) -> str:
        return f"<Ticket {self._key} #{self._seq} {self._state.name.lower()} size={self._size}>"
