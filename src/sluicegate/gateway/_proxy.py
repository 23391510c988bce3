"""The client side (one raw ASGI exchange) and the upstream relay (aiohttp).

Invariants:

* Bodies are forwarded unchanged both ways (no re-encoding, no decompression).
* A streamed response is relayed chunk by chunk as it arrives, never buffered.
* Once a byte was sent to the client, an upstream failure aborts the response (the
  connection is closed); nothing is retried and no error status can follow.
* When the client disconnects, the handler task is cancelled (see `Exchange`), so a
  queued request leaves its queue and an upstream request is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp

from ._errors import OUTCOME_BYPASSED, GatewayError, error_reply

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._classify import Classification
    from ._pool import Pool
    from ._tokens import UsageMeter

__all__ = ["ClientGone", "Exchange", "relay"]

_log = logging.getLogger("sluicegate.gateway")

Headers = list[tuple[bytes, bytes]]
Scope = dict[str, Any]
Message = dict[str, Any]

#: Request headers not forwarded: hop-by-hop ones, and those aiohttp sets itself.
_REQUEST_SKIP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
    }
)  # fmt: skip
#: Response headers not relayed (uvicorn frames the response itself).
_RESPONSE_SKIP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"trailer", b"upgrade"}
)
_STREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError)


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


@final
class Exchange:
    """One HTTP request and its response, as the handlers see it.

    Disconnect watch: after the body is read, one `receive()` stays pending. When it
    reports ``http.disconnect`` while the watch is armed, the handler task is cancelled
    and `disconnected` is set; the top-level handler then absorbs exactly that
    cancellation (``Task.uncancel``), the way `asyncio.timeout` does, and lets any
    other cancellation through.
    """

    __slots__ = (
        "_armed",
        "_rx",
        "_send",
        "_task",
        "arrived",
        "classification",
        "disconnected",
        "enqueued_at",
        "first_byte_at",
        "outcome",
        "pool",
        "queue_s",
        "queued",
        "receive",
        "scope",
        "started",
        "upstream_s",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.arrived = time.perf_counter()
        self.started = False
        self.disconnected = False
        self.outcome = OUTCOME_BYPASSED
        self.queue_s = 0.0
        self.upstream_s = 0.0
        self.first_byte_at = 0.0
        #: Set while the request waits in flow control, with the time it started to.
        self.queued = False
        self.enqueued_at = 0.0
        self.pool: Pool | None = None
        self.classification: Classification | None = None
        self._armed = False
        self._rx: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[Any] | None = None

    async def read_body(self, limit: int) -> bytes:
        """The whole request body.

        Raises:
            GatewayError: the body is larger than `limit` bytes (413).
            ClientGone: the client left first.
        """
        parts: list[bytes] = []
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise GatewayError(
                    413,
                    f"the request body exceeds the gateway's max_body_bytes={limit}",
                    code="request_too_large",
                )
            parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def watch_disconnect(self) -> None:
        """Arm the disconnect watch (call once the body is fully read)."""
        self._task = asyncio.current_task()
        self._armed = True
        self._rx = rx = asyncio.ensure_future(self.receive())
        rx.add_done_callback(self._on_receive)

    def _on_receive(self, rx: asyncio.Future[Message]) -> None:
        if rx.cancelled() or rx.exception() is not None:
            return
        if self._armed and rx.result()["type"] == "http.disconnect" and self._task is not None:
            self.disconnected = True
            self._armed = False
            self._task.cancel()

    def close(self) -> None:
        """Disarm the watch and drop the pending `receive()`."""
        self._armed = False
        if self._rx is not None and not self._rx.done():
            self._rx.cancel()

    def _our_headers(self) -> Headers:
        return [
            (b"x-sluicegate-outcome", self.outcome.encode()),
            (b"x-sluicegate-queue-ms", f"{self.queue_s * 1000.0:.3f}".encode()),
        ]

    async def start(self, status: int, headers: Headers) -> None:
        """Send the status line and headers (ours appended)."""
        self.started = True
        self.first_byte_at = time.perf_counter()
        headers.extend(self._our_headers())
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        """Send part of the body; more follows."""
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        """Send the last part of the body. The disconnect watch is disarmed first, since
        the server reports completion through the same pending `receive()`."""
        self._armed = False
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(self, status: int, body: bytes, content_type: bytes) -> None:
        """Send a whole response."""
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await self.start(status, headers)
        await self.finish(body)

    async def respond_error(self, exc: Exception, *, retry_after: int | None = None) -> None:
        """Answer `exc` as an OpenAI error (see `error_reply`)."""
        status, body, headers = error_reply(
            exc, queue_ms=self.queue_s * 1000.0, retry_after=retry_after
        )
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self._armed = False
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def forward_headers(headers: Headers) -> list[tuple[str, str]]:
    """The client's headers to send upstream (hop-by-hop ones dropped)."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name not in _REQUEST_SKIP
    ]


def _upstream_error(base: str, message: str, code: str) -> GatewayError:
    return GatewayError(
        502,
        f"backend {base}: {message}",
        type="upstream_error",
        code=code,
        outcome="Dispatched",
    )


async def relay(
    session: aiohttp.ClientSession,
    ex: Exchange,
    base: str,
    body: bytes,
    *,
    stream: bool,
    meter: UsageMeter | None = None,
) -> None:
    """Send the exchange's request to `base` and relay the response to the client.

    Args:
        session: the gateway's pooled client session.
        ex: the client exchange.
        base: the backend's base URL.
        body: the request body, forwarded unchanged.
        stream: relay chunk by chunk (else read the whole body, then send it at once).
        meter: told about the response (status, body or chunks) to account its tokens.

    Raises:
        GatewayError: connect error, or a 5xx status before any byte was relayed (502).
    """
    scope = ex.scope
    url = base + scope["path"]
    if query := scope.get("query_string"):
        url += "?" + query.decode("latin-1")
    began = time.perf_counter()
    try:
        resp = await session.request(
            scope["method"],
            url,
            data=body or None,
            headers=forward_headers(scope["headers"]),
            allow_redirects=False,
        )
    except _STREAM_ERRORS as exc:
        raise _upstream_error(base, f"request failed: {exc!r}", "upstream_unreachable") from None
    clean = False
    try:
        if resp.status >= 500:
            detail = (await resp.content.read(300)).decode("utf-8", "replace")
            raise _upstream_error(
                base,
                f"answered HTTP {resp.status} before any byte was relayed: {detail}",
                "bad_gateway",
            )
        await _relay_response(ex, resp, began, stream=stream, meter=meter)
        clean = True
    except _STREAM_ERRORS as exc:
        if not ex.started:
            raise _upstream_error(base, f"failed before any byte: {exc!r}", "bad_gateway") from None
        # Returning without finishing makes the server close the connection: the client
        # sees a truncated response, never a well-formed but incomplete one.
        _log.warning("backend=%s aborted a response mid-stream: %r", base, exc)
    finally:
        # release() returns a fully read connection to the pool; close() drops it, which
        # tells the backend to stop generating (client gone, or an error).
        if clean:
            resp.release()
        else:
            resp.close()


async def _relay_response(
    ex: Exchange,
    resp: aiohttp.ClientResponse,
    began: float,
    *,
    stream: bool,
    meter: UsageMeter | None,
) -> None:
    """Send the backend's answer to the client: whole, or chunk by chunk as it arrives."""
    headers = [(n.lower(), v) for n, v in resp.raw_headers if n.lower() not in _RESPONSE_SKIP]
    if not stream:
        data = await resp.read()
        ex.upstream_s = time.perf_counter() - began
        if meter is not None:
            meter.body(resp.status, data)
        headers.append((b"content-length", str(len(data)).encode()))
        await ex.start(resp.status, headers)
        await ex.finish(data)
        return
    if meter is not None:
        meter.begin(resp.status)
    # The headers go out with the first chunk: until then nothing reached the client,
    # so the request may still be taken back and queued again (_preempt.py).
    async for chunk in resp.content.iter_any():
        if not ex.started:
            ex.upstream_s = time.perf_counter() - began
            await ex.start(resp.status, headers)
        if meter is not None:
            meter.chunk(chunk)
        await ex.chunk(chunk)
    if not ex.started:
        ex.upstream_s = time.perf_counter() - began
        await ex.start(resp.status, headers)
    await ex.finish()
