"""Upstream failures: what kind each is and what the client is told.

A client is never told a backend's address (that stays in the log and the metrics);
it gets the kind of failure and, for a 5xx, the backend's own short explanation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, final

import aiohttp
import orjson

import sluicegate as sg

from ._errors import GatewayError
from ._http1 import ConnectError, HTTPClientError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "KIND_BROKEN",
    "KIND_CONNECT",
    "KIND_STATUS",
    "KIND_TIMEOUT",
    "UPSTREAM_ERRORS",
    "UpstreamFailure",
    "failure",
    "kind_of",
    "sse_error_event",
]

#: The backend could not be reached (refused, DNS, connect timeout counts as timeout).
KIND_CONNECT: Final = "connect"
#: No byte from the backend for `read_timeout` (or the connect timeout).
KIND_TIMEOUT: Final = "timeout"
#: The backend answered a 5xx status.
KIND_STATUS: Final = "status_5xx"
#: The connection broke or the backend sent invalid HTTP (reset, bad chunk framing...).
KIND_BROKEN: Final = "broken"

_STATUS: Final = {KIND_CONNECT: 502, KIND_TIMEOUT: 504, KIND_STATUS: 502, KIND_BROKEN: 502}
_CODE: Final = {
    KIND_CONNECT: "upstream_unreachable",
    KIND_TIMEOUT: "upstream_timeout",
    KIND_STATUS: "bad_gateway",
    KIND_BROKEN: "bad_gateway",
}
_SAY: Final = {
    KIND_CONNECT: "could not connect to a backend",
    KIND_TIMEOUT: "a backend sent nothing within the gateway's timeout",
    KIND_STATUS: "a backend answered with a server error",
    KIND_BROKEN: "a backend's answer broke off or was malformed",
}


class UpstreamFailure(Exception):
    """One upstream attempt failed (raised by `UPSTREAM_ERRORS`, or for a 5xx status).

    Args:
        kind: how (`KIND_CONNECT`, `KIND_TIMEOUT`, `KIND_STATUS`, `KIND_BROKEN`).
        cause: the exception it maps, or a note for the log.
        detail: what the client may be told besides the kind (a 5xx's explanation).
    """

    def __init__(self, kind: str, cause: object, detail: str = "") -> None:
        super().__init__(kind, cause, detail)
        self.kind = kind
        self.cause = cause
        self.detail = detail


@final
class _MapUpstreamErrors:
    """``with UPSTREAM_ERRORS:`` turns the upstream client's (`_http1`; aiohttp's, for the
    other callers) and timeout errors raised inside into
    `UpstreamFailure` of their kind (httpcore's ``map_exceptions``), so each relay has
    one handler for every way a backend can fail. A plain class, not a
    ``contextlib.contextmanager``: it is entered once per request on the hot path."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, HTTPClientError | TimeoutError | aiohttp.ClientError):
            raise UpstreamFailure(kind_of(exc), exc) from None
        return False


#: The one mapping of upstream exceptions (see `_MapUpstreamErrors`).
UPSTREAM_ERRORS: Final = _MapUpstreamErrors()


def kind_of(exc: BaseException) -> str:
    """The failure kind of an upstream client's or timeout exception."""
    if isinstance(exc, TimeoutError):  # ConnectTimeout, ReadTimeout, aiohttp's too
        return KIND_TIMEOUT
    if isinstance(exc, ConnectError | aiohttp.ClientConnectorError):
        return KIND_CONNECT
    return KIND_BROKEN


def failure(kind: str, pool: str | None, detail: str = "") -> GatewayError:
    """The error a client gets for an upstream failure of `kind` in `pool` (its name);
    no backend address."""
    where = f" of pool {pool}" if pool is not None else ""
    message = _SAY[kind].replace("a backend", f"a backend{where}", 1)
    if detail:
        message += f": {detail}"
    return GatewayError(
        _STATUS[kind],
        message,
        type="upstream_error",
        code=_CODE[kind],
        outcome=sg.Outcome.DISPATCHED,
    )


def sse_error_event(err: GatewayError) -> bytes:
    """`err` as an OpenAI-shaped SSE error event, to end a stream that cannot go on."""
    doc = {"error": {"message": err.message, "type": err.type, "code": err.code, "param": None}}
    return b"data: " + orjson.dumps(doc) + b"\n\n"
