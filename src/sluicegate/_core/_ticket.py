"""A request's record inside the controller, from submission to release.

Invariants:

* `state` only moves forward: QUEUED -> DISPATCHED -> RELEASED, or QUEUED -> FINISHED
  (evicted), or straight to FINISHED (rejected) or DISPATCHED (dispatched on arrival).
* `outcome` is set exactly once, when the state leaves QUEUED (or at rejection); the
  one exception is `Scheduler.revoke`, which turns a dispatch nobody received into
  EvictedCancelled before anyone could observe it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, final

if TYPE_CHECKING:
    from .._types import FlowKey, Outcome
    from ._registry import Band, Flow

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

    Attributes:
        key: the flow the request was submitted under.
        priority: the band that served it (differs from ``key.priority`` only when
            dynamic bands are off and the request fell back to band 0).
        size: the request's size in bytes, as given at admission.
        arrival: loop time of the submission (its logical arrival).
        dispatched_at: loop time of the dispatch, or None.
        assignment: free for the saturation detector (e.g. the backend it chose).
        input_tokens: input tokens charged for fairness (estimate, then actual).
        output_tokens: output tokens charged for fairness (estimate, then actual).
    """

    __slots__ = (
        "__weakref__",
        "_owner",
        "arrival",
        "assignment",
        "band",
        "dispatched_at",
        "eta",
        "expires_at",
        "flow",
        "handed_over",
        "input_tokens",
        "key",
        "no_endpoint_at",
        "outcome",
        "output_tokens",
        "priority",
        "requeues",
        "seq",
        "size",
        "slo_at",
        "sort_key",
        "state",
        "ttl",
        "usage_known",
        "waiter",
    )

    def __init__(
        self,
        key: FlowKey,
        size: int,
        arrival: float,
        seq: int,
        expires_at: float | None,
        slo_at: float | None,
    ) -> None:
        self.key = key
        self.priority = key.priority
        self.size = size
        self.arrival = arrival
        self.seq = seq
        self.expires_at = expires_at
        #: Seconds it may wait (0 without a deadline): a requeued ticket waits it again.
        self.ttl = 0.0 if expires_at is None else expires_at - arrival
        self.slo_at = slo_at
        self.no_endpoint_at: float | None = None
        self.sort_key: Any = seq
        self.state = State.NEW
        self.outcome: Outcome | None = None
        self.dispatched_at: float | None = None
        self.band: Band | None = None
        self.flow: Flow | None = None
        #: The shell's waiter (an asyncio.Future); opaque to the core.
        self.waiter: Any = None
        self.handed_over = False
        self.assignment: Any = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.usage_known = False
        #: Times it was taken back from flight and queued again (`Scheduler.requeue`).
        self.requeues = 0
        #: Estimated queue wait (seconds) when it was queued; None if dispatched at
        #: once or no drain rate was known yet (see `_admission.py`).
        self.eta: float | None = None
        self._owner: _Releaser | None = None

    @property
    def queue_time(self) -> float | None:
        """Seconds between arrival and dispatch, or None if not dispatched."""
        if self.dispatched_at is None:
            return None
        return self.dispatched_at - self.arrival

    @property
    def released(self) -> bool:
        """True once the in-flight slot was given back."""
        return self.state is State.RELEASED

    def release(self) -> None:
        """Give the in-flight slot back. Idempotent; a no-op unless dispatched."""
        if self.state is State.DISPATCHED and self._owner is not None:
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
        if self._owner is not None and self.state in (State.DISPATCHED, State.RELEASED):
            self._owner._record_usage(self, input_tokens, output_tokens, final)

    def __repr__(self) -> str:
        return f"<Ticket {self.key} #{self.seq} {self.state.name.lower()} size={self.size}>"
