"""Every error the gateway answers, and the one place it becomes an HTTP response.

Flow-control outcomes (`sluicegate.FlowControlError`) and the gateway's own refusals
(`GatewayError`: bad headers, bodies, unknown models, upstream failures) are both turned
into an OpenAI-shaped body ``{"error": {"message", "type", "code", "param"}}`` by
`error_reply`, so status codes and wording stay consistent across routes.
"""

from __future__ import annotations

import enum
from typing import TypeAlias, final

import orjson

import sluicegate as sg

__all__ = ["GatewayError", "GatewayOutcome", "RequestOutcome", "error_reply", "retry_reason"]


@final
class GatewayOutcome(enum.Enum):
    """Outcomes of requests that never reached flow control (``x-sluicegate-outcome``)."""

    #: Refused by the gateway itself first (bad header, body, unknown model...).
    INVALID = "Invalid"
    #: Not flow-controlled (health, metrics, utility routes).
    BYPASSED = "Bypassed"


#: A request's outcome: the flow controller's, or one of the gateway's own.
RequestOutcome: TypeAlias = sg.Outcome | GatewayOutcome

Headers = list[tuple[bytes, bytes]]


@final
class GatewayError(Exception):
    """A refusal decided by the gateway itself, answered as an OpenAI error.

    Args:
        status: the HTTP status.
        message: what went wrong and, where it helps, what to do instead.
        type: the OpenAI error type (``invalid_request_error``...).
        code: a stable machine-readable code.
        param: the header or field at fault, if any.
        outcome: the `x-sluicegate-outcome` value.
        retry_after: seconds for `Retry-After` (429 only).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str,
        param: str | None = None,
        outcome: RequestOutcome = GatewayOutcome.INVALID,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.outcome = outcome
        self.retry_after = retry_after


def _flow_control(exc: sg.FlowControlError) -> tuple[int, str, str]:
    """Status, OpenAI type and code of a flow-control outcome."""
    if isinstance(exc, sg.QueueFullError | sg.WouldBlock):
        return 429, "rate_limit_error", "queue_full"
    if isinstance(exc, sg.DeadlineUnreachableError):
        return 429, "rate_limit_error", "deadline_unreachable"
    if isinstance(exc, sg.DisplacedError):
        return 429, "rate_limit_error", "displaced"
    if isinstance(exc, sg.TTLExpiredError):
        return 503, "service_unavailable", "queue_timeout"
    if isinstance(exc, sg.NoEndpointsError | sg.NoEndpointsEvictedError):
        return 503, "service_unavailable", "no_endpoints"
    if isinstance(exc, sg.ControllerClosedError | sg.ControllerClosedEvictedError):
        return 503, "service_unavailable", "shutting_down"
    status = exc.status_hint if 400 <= exc.status_hint < 600 else 500
    return status, "server_error", "flow_control_error"


def retry_reason(exc: Exception, retry_after: int | None) -> str:
    """What a 429's retry advice means (``x-sluicegate-retry``, the body's ``retry``).

    ``reserved``: `Retry-After` is a promise, a place is kept for this request after it.
    ``deadline``: its deadline cannot be met (the work ahead is in
    ``x-sluicegate-queue-eta-ms``); `Retry-After` estimates when that work will have
    drained to within it. ``displaced``: it made room for higher-priority work;
    `Retry-After`, when sent, estimates when its band drains what waits now.
    ``estimate``: `Retry-After` is the gateway's estimate (`retry_reservations: false`).
    Otherwise no `Retry-After` was sent, and this says why, so the client backs off by
    its own policy: ``horizon`` (the band's place would free beyond the 60 s the gateway
    promises), ``starved`` (the band let nothing out lately), ``table_full``, or
    ``capacity`` (another limit).
    """
    if isinstance(exc, sg.QueueFullError) and exc.reserved and retry_after is not None:
        return "reserved"
    if isinstance(exc, sg.DeadlineUnreachableError):
        return "deadline"
    if isinstance(exc, sg.DisplacedError):
        return "displaced"
    if retry_after is not None:
        return "estimate"
    if isinstance(exc, sg.QueueFullError) and exc.retry is not None:
        return exc.retry
    return "capacity"


def error_reply(
    exc: Exception,
    *,
    queue_ms: float,
    retry_after: int | None = None,
    queue: tuple[float | None, int] | None = None,
) -> tuple[int, bytes, Headers]:
    """Map any error to (status, OpenAI JSON body, response headers).

    Args:
        exc: a `GatewayError`, a `sluicegate.FlowControlError`, or anything else (500).
        queue_ms: milliseconds the request waited in flow control.
        retry_after: seconds for `Retry-After`; only sent with 429.
        queue: (estimated wait in seconds or None, queue position) of a request of the
            same priority now, sent as `x-sluicegate-queue-eta-ms` and
            `x-sluicegate-queue-position` (an early rejection sends its own).
    """
    param: str | None = None
    if isinstance(exc, GatewayError):
        status, type_, code, outcome = exc.status, exc.type, exc.code, exc.outcome
        param = exc.param
        message = exc.message
        if retry_after is None:
            retry_after = exc.retry_after
    elif isinstance(exc, sg.FlowControlError):
        status, type_, code = _flow_control(exc)
        outcome = exc.outcome
        message = str(exc) or type(exc).__name__
    else:
        status, type_, code = 500, "server_error", "internal_error"
        outcome = GatewayOutcome.INVALID
        message = "internal gateway error; see the gateway log"
    error: dict[str, str | None] = {"message": message, "type": type_, "code": code}
    error["param"] = param
    flow = isinstance(exc, sg.FlowControlError)
    retry = retry_reason(exc, retry_after) if status == 429 and flow else None
    if retry is not None:
        error["retry"] = retry
    body = orjson.dumps({"error": error})
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-sluicegate-outcome", outcome.value.encode()),
        (b"x-sluicegate-queue-ms", f"{queue_ms:.3f}".encode()),
    ]
    if status == 429 and retry_after is not None:
        headers.append((b"retry-after", str(max(1, retry_after)).encode()))
        if isinstance(exc, sg.QueueFullError) and exc.reserved:  # a place is kept for it
            headers.append((b"x-sluicegate-retry-reserved", b"1"))
    if retry is not None:
        headers.append((b"x-sluicegate-retry", retry.encode()))
    if isinstance(exc, sg.DeadlineUnreachableError):
        queue = (exc.wait_s, exc.position)
    if queue is not None:
        eta_s, position = queue
        headers.append((b"x-sluicegate-queue-position", str(position).encode()))
        if eta_s is not None:
            headers.append((b"x-sluicegate-queue-eta-ms", f"{eta_s * 1000.0:.0f}".encode()))
    return status, body, headers
