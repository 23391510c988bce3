"""Helpers for testing code built on sluicegate: a saturation detector you drive by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._core._ticket import Ticket

__all__ = ["ManualDetector"]


@final
class ManualDetector:
    """A saturation detector whose answers you set; it notifies the controller on change.

    Args:
        saturated: the initial answer of `is_saturated`.
        endpoints: the initial answer of `has_endpoints`.
        recheck_interval: set it to behave like a detector that cannot notify.
    """

    def __init__(
        self,
        *,
        saturated: bool = False,
        endpoints: bool = True,
        recheck_interval: float | None = None,
    ) -> None:
        self.saturated = saturated
        self.endpoints = endpoints
        self.recheck_interval = recheck_interval
        self.in_flight = 0
        self.dispatched = 0
        #: What `utilization()` answers while not saturated.
        self.load = 0.0
        self._listener: Callable[[], None] | None = None

    def set(
        self, *, saturated: bool | None = None, endpoints: bool | None = None, notify: bool = True
    ) -> None:
        """Change the answers, and tell the controller unless `notify` is False."""
        if saturated is not None:
            self.saturated = saturated
        if endpoints is not None:
            self.endpoints = endpoints
        if notify and self._listener is not None:
            self._listener()

    def is_saturated(self) -> bool:
        return self.saturated

    def has_endpoints(self) -> bool:
        return self.endpoints

    def utilization(self) -> float:
        return 1.0 if self.saturated else self.load

    def on_dispatch(self, ticket: Ticket, /) -> None:
        self.in_flight += 1
        self.dispatched += 1

    def on_release(self, ticket: Ticket, /) -> None:
        self.in_flight -= 1

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        self._listener = listener
