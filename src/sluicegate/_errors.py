"""The error tree. Every error carries its `Outcome` and a suggested HTTP status.

::

    FlowControlError(Exception)                   base; never raised directly
    +-- RejectedError                             never entered a queue
    |   +-- QueueFullError           429          band or global capacity
    |   +-- NoEndpointsError         503          no backend, and no time to wait for one
    |   +-- ControllerClosedError    503          not running (not started, or closed)
    |   +-- DeadlineUnreachableError 429          its deadline cannot be met (early reject)
    +-- EvictedError                              was queued, removed without dispatch
    |   +-- TTLExpiredError          503          waited its whole TTL
    |   +-- NoEndpointsEvictedError  503          waited its no-endpoint TTL with no backend
    |   +-- ControllerClosedEvictedError 503      controller closed while it waited
    |   +-- DisplacedError           429          made room for a higher-priority arrival
    +-- ConfigError(ValueError)                   names the field and the value
    |   +-- UnknownPluginError(LookupError)       lists the known names
    |   +-- IncompatiblePolicyError               policy needs what the queue lacks
    +-- WouldBlock                                only from *_nowait

Cancellation is not in the tree: a cancelled waiter sees `asyncio.CancelledError`
unchanged (its outcome, EvictedCancelled, is counted, never raised).
"""

from __future__ import annotations

from typing import ClassVar

from ._types import Outcome

__all__ = [
    "ConfigError",
    "ControllerClosedError",
    "ControllerClosedEvictedError",
    "DeadlineUnreachableError",
    "DisplacedError",
    "EvictedError",
    "FlowControlError",
    "IncompatiblePolicyError",
    "NoEndpointsError",
    "NoEndpointsEvictedError",
    "QueueFullError",
    "RejectedError",
    "TTLExpiredError",
    "UnknownPluginError",
    "WouldBlock",
]


class FlowControlError(Exception):
    """Base of every sluicegate error.

    Attributes:
        outcome: the request's outcome, usable as a metric label.
        status_hint: the HTTP status a gateway should answer with.
    """

    outcome: ClassVar[Outcome] = Outcome.REJECTED_OTHER
    status_hint: ClassVar[int] = 500


class RejectedError(FlowControlError):
    """The request was refused before it entered a queue."""

    outcome = Outcome.REJECTED_OTHER
    status_hint = 500


class QueueFullError(RejectedError):
    """A band or global capacity limit is reached. Retry later, or raise the limit.

    Attributes:
        retry_after: whole seconds after which a place is promised to this request
            (`FlowControlConfig.retry_reservations`), or None: nothing is promised.
        reserved: a place is promised to this request after `retry_after` seconds
            (``retry == "reserved"``).
        retry: why a refusal by a band's ``max_requests`` promised nothing (``horizon``:
            the place would free later than the longest delay advised; ``starved``: the
            band let nothing out lately; ``table_full``), ``reserved``, or None (not a
            refusal that may promise, or promises are off).
    """

    outcome = Outcome.REJECTED_CAPACITY
    status_hint = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after: int | None = None,
        retry: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.retry = retry

    @property
    def reserved(self) -> bool:
        """A place is promised to this request after `retry_after` seconds."""
        return self.retry == "reserved"


class NoEndpointsError(RejectedError):
    """No backend serves this pool, and the no-endpoint TTL allows no wait."""

    outcome = Outcome.REJECTED_NO_ENDPOINTS
    status_hint = 503


class ControllerClosedError(RejectedError):
    """The controller is not running: not started yet, or closed."""

    outcome = Outcome.REJECTED_OTHER
    status_hint = 503


class DeadlineUnreachableError(RejectedError):
    """Early rejection: the request's deadline (its SLO when given, else its TTL) cannot
    be met given the work queued ahead of it and its band's drain rate. Retry after
    `retry_after` seconds, or with a longer deadline.

    Attributes:
        wait_s: the estimated queue wait, in seconds.
        position: its place in the queue had it been admitted (1 = next).
        retry_after: whole seconds (1 to 60) after which the work queued ahead of it now
            should have drained to within its deadline, at the same estimated rate: an
            estimate, not a promise (work of higher priority may cut in meanwhile).
    """

    outcome = Outcome.REJECTED_DEADLINE
    status_hint = 429

    def __init__(
        self, message: str, *, wait_s: float = 0.0, position: int = 0, retry_after: int = 1
    ) -> None:
        super().__init__(message)
        self.wait_s = wait_s
        self.position = position
        self.retry_after = retry_after


class EvictedError(FlowControlError):
    """The request was queued, then removed without being dispatched."""

    outcome = Outcome.EVICTED_OTHER
    status_hint = 503


class TTLExpiredError(EvictedError):
    """The request waited its whole TTL without capacity becoming free."""

    outcome = Outcome.EVICTED_TTL
    status_hint = 503


class NoEndpointsEvictedError(EvictedError):
    """The request waited its no-endpoint TTL while the pool had no backend."""

    outcome = Outcome.EVICTED_NO_ENDPOINTS
    status_hint = 503


class ControllerClosedEvictedError(EvictedError):
    """The controller closed while the request was waiting."""

    outcome = Outcome.EVICTED_OTHER
    status_hint = 503


class DisplacedError(EvictedError):
    """A capacity limit was reached and this queued request made room for an arrival
    of strictly higher priority (displacement). Retry after `retry_after` seconds.

    Attributes:
        retry_after: whole seconds (1 to 60) in which its band is estimated to drain the
            work queued at its priority and above when it was displaced (an estimate, not
            a promise), or None: the band has no drain estimate yet.
    """

    outcome = Outcome.EVICTED_DISPLACED
    status_hint = 429

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(FlowControlError, ValueError):
    """Invalid configuration. The message names the field and the value."""

    outcome = Outcome.REJECTED_OTHER
    status_hint = 500


class UnknownPluginError(ConfigError, LookupError):
    """A policy or queue name is not in its table. The message lists the known names."""


class IncompatiblePolicyError(ConfigError):
    """A policy needs a queue capability that the configured queue lacks."""


class WouldBlock(FlowControlError):
    """A `*_nowait` call could not complete without waiting."""

    outcome = Outcome.REJECTED_CAPACITY
    status_hint = 429
