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
    """

    __slots__ = (
        "__weakref__",
        "_owner",
        "arrival",
        "assignment",
        "band",
        "dispatched_at",
        "expires_at",
        "flow",
        "handed_over",
        "key",
        "no_endpoint_at",
        "outcome",
        "priority",
        "seq",
        "size",
        "slo_at",
        "sort_key",
        "state",
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

    def __repr__(self) -> str:
        return f"<Ticket {self.key} #{self.seq} {self.state.name.lower()} size={self.size}>"
