"""Errors the simulator answers with. Each carries the HTTP status and OpenAI error type.

::

    SimError(Exception)
    +-- InvalidRequestError      400  malformed body, prompt or output too long
    +-- ModelNotFoundError       404  `model` is not a served name
    +-- WaitingQueueFullError    429  engine waiting queue at --max-waiting-queue-length
    +-- InjectedFailureError     500 or 429  --failure-injection-rate drew an HTTP failure
    +-- EngineClosedError        503  the server is shutting down
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EngineClosedError",
    "InjectedFailureError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "SimError",
    "WaitingQueueFullError",
]


class SimError(Exception):
    """Base of the simulator's request errors; never raised directly."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "InternalServerError"


class InvalidRequestError(SimError):
    """The request cannot be served as sent."""

    status = 400
    error_type = "BadRequestError"


class ModelNotFoundError(SimError):
    """The request names a model this server does not serve."""

    status = 404
    error_type = "NotFoundError"


class WaitingQueueFullError(SimError):
    """The engine's waiting queue is at `max_waiting_queue_length`."""

    status = 429
    error_type = "RateLimitError"


class EngineClosedError(SimError):
    """The engine is closed (the server is shutting down)."""

    status = 503
    error_type = "ServiceUnavailableError"


class InjectedFailureError(SimError):
    """A failure drawn by failure injection; `status` is set per instance."""

    def __init__(self, status: int) -> None:
        super().__init__(f"injected failure: HTTP {status}")
        self.status = status  # type: ignore[misc]  # per-instance override of the ClassVar
        self.error_type = (  # type: ignore[misc]  # same
            "RateLimitError" if status == 429 else "InternalServerError"
        )
