"""Saturation detectors: when may the next request be dispatched?

A detector is synchronous: it answers from cached state (counters, the last metrics
scrape), because it is asked before every single dispatch. When its answer may have
changed for a reason the controller cannot see (a scrape, a new backend, a new limit)
it calls the listener the controller installed, and the controller re-runs dispatch.
A detector that cannot notify sets `recheck_interval` instead; the controller then
re-asks it at that interval, and only while requests are blocked.

A detector may also offer ``slots() -> (free, capacity) | None``: how many more
requests it would take now, out of how many in all. With it, the controller keeps free
slots for higher bands sized to their recent demand (`FlowControlConfig.demand_headroom`);
without it, only `max_utilization` ceilings make headroom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._ticket import Ticket

__all__ = ["ConcurrencyLimit", "NeverSaturated", "SaturationDetector"]


class SaturationDetector(Protocol):
    """**Protocol:** tell the controller whether the backends can take one more request.

    `is_saturated`, `has_endpoints` MUST be cheap and MUST NOT block. `on_dispatch` is
    called right after a request is dispatched (before the next `is_saturated`), and
    `on_release` when its in-flight slot is given back; a detector may store what it
    decided (e.g. the backend) in `ticket.assignment`. A method that raises is isolated:
    the pool counts as saturated (`is_saturated`, `utilization`) or as having endpoints
    (`has_endpoints`), a failed hook changes nothing, and the controller logs it.
    """

    #: Seconds between re-checks while blocked, for detectors that never notify; else None.
    recheck_interval: float | None

    def is_saturated(self) -> bool: ...

    def has_endpoints(self) -> bool: ...

    def utilization(self) -> float:
        """The load a dispatch would meet now, as a fraction of capacity (>= 1: full).

        Asked only for bands with `max_utilization` < 1.
        """
        ...

    def on_dispatch(self, ticket: Ticket, /) -> None: ...

    def on_release(self, ticket: Ticket, /) -> None: ...

    def set_listener(self, listener: Callable[[], None] | None, /) -> None: ...


@final
class NeverSaturated:
    """Dispatch everything at once: flow control without a capacity limit."""

    recheck_interval: float | None = None

    def is_saturated(self) -> bool:
        return False

    def has_endpoints(self) -> bool:
        return True

    def utilization(self) -> float:
        return 0.0

    def on_dispatch(self, ticket: Ticket, /) -> None:
        pass

    def on_release(self, ticket: Ticket, /) -> None:
        pass

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        pass

    def __repr__(self) -> str:
        return "NeverSaturated()"


@final
class ConcurrencyLimit:
    """At most `max_in_flight` requests in flight, from dispatch until release.

    Args:
        max_in_flight: the limit, an int >= 0 (0 holds every request in its queue).

    Raises:
        ValueError: the limit is not an int >= 0.
    """

    recheck_interval: float | None = None
    __slots__ = ("_in_flight", "_limit", "_listener")

    def __init__(self, max_in_flight: int) -> None:
        self._limit = _check_limit(max_in_flight)
        self._in_flight = 0
        self._listener: Callable[[], None] | None = None

    @property
    def max_in_flight(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def set_limit(self, max_in_flight: int) -> None:
        """Change the limit; waiting requests are dispatched at once if it grew."""
        self._limit = _check_limit(max_in_flight)
        if self._listener is not None:
            self._listener()

    def is_saturated(self) -> bool:
        return self._in_flight >= self._limit

    def has_endpoints(self) -> bool:
        return True

    def utilization(self) -> float:
        return self._in_flight / self._limit if self._limit else 1.0

    def slots(self) -> tuple[float, float]:
        """(free, capacity): requests it would still take, out of its limit."""
        return max(self._limit - self._in_flight, 0), self._limit

    def on_dispatch(self, ticket: Ticket, /) -> None:
        self._in_flight += 1

    def on_release(self, ticket: Ticket, /) -> None:
        self._in_flight -= 1

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        self._listener = listener

    def __repr__(self) -> str:
        return f"ConcurrencyLimit({self._limit}) [in flight: {self._in_flight}]"


def _check_limit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"max_in_flight must be an int >= 0, got {value!r}")
    return value
