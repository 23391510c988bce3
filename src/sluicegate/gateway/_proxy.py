"""The client side (one raw ASGI exchange) and the upstream relay (`_client.Client`).

Invariants:

* Bodies are forwarded unchanged both ways (no re-encoding, no decompression).
* A streamed response is relayed chunk by chunk as it arrives, never buffered. Under
  the built-in server, after the first chunk, each part is written from the upstream
  connection's read callback (`Response.pump`), with no task step per chunk; a full
  client socket stops the reading until it drains.
* Once a byte was sent to the client, an upstream failure ends the response: an SSE
  stream with an error event, anything else by closing the connection. Nothing is
  retried and no error status can follow.
* Every read from a backend is bounded by `read_timeout` (the client's own timer).
* A non-streamed answer is buffered (to send it with a content-length) only up to
  `max_buffered_response_bytes`; a larger one is relayed as it arrives.
* When the client disconnects, the handler task is cancelled (see `Exchange`), so a
  queued request leaves its queue and an upstream request is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final, final

import sluicegate as sg

from ..asgi import BodyTooLarge, Message, Receive, Scope, Send, read_body
from ._errors import GatewayError, GatewayOutcome, error_reply
from ._http1 import HTTPClientError, Response, Target
from ._queue_events import preamble_continues, sse_failure
from ._record import RequestRecord, now
from ._upstream import (
    KIND_STATUS,
    UPSTREAM_ERRORS,
    UpstreamFailure,
    failure,
    sse_error_event,
)

if TYPE_CHECKING:
    from ._client import Client
    from ._config import ServerSettings
    from ._tokens import UsageMeter

__all__ = [
    "BodyBudget",
    "Exchange",
    "forward_headers",
    "relay",
    "upstream_failed",
    "upstream_url",
]

_log = logging.getLogger("sluicegate.gateway")

Headers = list[tuple[bytes, bytes]]

#: Request headers not forwarded: hop-by-hop ones, and those the client sets itself.
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
_STREAM_ERRORS: Final = (HTTPClientError, TimeoutError)
#: Bytes kept from the end of an unbuffered answer to find its ``usage`` object.
_TAIL: Final = 4096
#: Upstream URLs of query-less requests, by (base, path) (see `upstream_url`).
_URLS: dict[tuple[str, str], Target] = {}
_MAX_URLS: Final = 1024
#: ``x-sluicegate-outcome`` values, encoded once.
_OUTCOME_BYTES: Final = {o: o.value.encode() for o in (*sg.Outcome, *GatewayOutcome)}


@final
class BodyBudget:
    """Bytes of request bodies in memory at once, across all requests.

    Args:
        limit: the most bytes held together; a request that would pass it is refused.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        """Hold `n` more bytes.

        Raises:
            GatewayError: that would exceed the limit (503); nothing was taken.
        """
        if self.held + n > self.limit:
            raise GatewayError(
                503,
                f"the gateway holds its limit of request bodies in memory "
                f"(server.body_memory_budget={self.limit} bytes); retry shortly",
                type="service_unavailable",
                code="body_budget_exceeded",
            )
        self.held += n

    def give(self, n: int) -> None:
        """Release `n` bytes taken earlier."""
        self.held -= n


_NO_BUDGET: Final = BodyBudget(1 << 62)


@final
class Exchange:
    """One HTTP request and its response, as the handlers see it: the I/O only. What
    the request went through (classification, outcome, timings) is its `record`.

    Disconnect watch: after the body is read, one `receive()` stays pending. When it
    reports ``http.disconnect`` while the watch is armed, the handler task is cancelled
    and `disconnected` is set; the top-level handler then absorbs exactly that
    cancellation (``Task.uncancel``), the way `asyncio.timeout` does, and lets any
    other cancellation through.
    """

    __slots__ = (
        "_armed",
        "_budget",
        "_held",
        "_rx",
        "_send",
        "_task",
        "disconnected",
        "preamble",
        "receive",
        "record",
        "scope",
        "server",
        "sse",
        "started",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.record = RequestRecord(now())
        #: The response's status line went out: no error status can follow.
        self.started = False
        self.disconnected = False
        #: The server settings in force for this request (limits, timeouts).
        self.server: ServerSettings | None = None
        #: The response being relayed is a server-sent event stream.
        self.sse = False
        #: Headers and queue-event comments went out while it waited, no model byte
        #: yet (`_queue_events.py`); `started` stays False until the answer starts.
        self.preamble = False
        self._armed = False
        self._rx: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._budget = _NO_BUDGET
        self._held = 0

    async def read_body(self, limit: int, budget: BodyBudget) -> bytes | bytearray:
        """The whole request body, counted against `budget` until `close`.

        Raises:
            GatewayError: the body is larger than `limit` bytes (413), or the bodies in
                memory would exceed the budget (503).
            ClientGone: the client left first.
        """
        self._budget = budget
        try:
            return await read_body(self.receive, limit, self._hold)
        except BodyTooLarge:
            raise GatewayError(
                413,
                f"the request body exceeds the gateway's max_body_bytes={limit}",
                code="request_too_large",
            ) from None

    def _hold(self, n: int) -> None:
        self._budget.take(n)
        self._held += n

    def watch_disconnect(self) -> None:
        """Arm the disconnect watch (call once the body is fully read). With the
        built-in server's ``sluicegate.disconnect`` extension it is a callback (no
        task per request); under another server, a pending ``receive()``."""
        self._armed = True
        watch = self.extension("sluicegate.disconnect")
        if watch is not None:
            self._task = watch["watch"](self._on_disconnect)  # the task running us
            return
        self._task = asyncio.current_task()
        self._rx = rx = asyncio.ensure_future(self.receive())
        rx.add_done_callback(self._on_receive)

    def _on_receive(self, rx: asyncio.Future[Message]) -> None:
        if rx.cancelled() or rx.exception() is not None:
            return
        if rx.result()["type"] == "http.disconnect":
            self._on_disconnect()

    def _on_disconnect(self) -> None:
        if self._armed and self._task is not None:
            self.disconnected = True
            self._armed = False
            self._task.cancel()

    def close(self) -> None:
        """Disarm the watch, drop the pending `receive()`, return the body's budget."""
        self._armed = False
        if self._rx is not None and not self._rx.done():
            self._rx.cancel()
        if self._held:
            self._budget.give(self._held)
            self._held = 0

    @property
    def finishing(self) -> bool:
        """The last part of the body is going out (or went): nothing may be added."""
        return self.started and not self._armed

    async def start(self, status: int, headers: Headers) -> None:
        """Send the status line and headers (ours appended); with a queue-events
        preamble they are out already: only a success may follow it."""
        if self.preamble:
            preamble_continues(status)
            self.started = True
            self.record.first_byte_at = now()
            return
        self.started = True
        record = self.record
        record.first_byte_at = now()
        headers.append((b"x-sluicegate-outcome", _OUTCOME_BYTES[record.outcome]))
        headers.append((b"x-sluicegate-queue-ms", b"%.3f" % (record.queue_s * 1000.0)))
        if record.eta_s is not None:  # the wait predicted when it was queued
            headers.append((b"x-sluicegate-queue-eta-ms", b"%.0f" % (record.eta_s * 1000.0)))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def open_preamble(self, headers: Headers) -> None:
        """Send 200 and `headers` before the answer exists (queue events)."""
        self.preamble = self.sse = True
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    def extension(self, name: str) -> Any:
        """The server's ASGI scope extension `name` (the built-in server's
        ``sluicegate.disconnect`` and ``sluicegate.body``), or None."""
        extensions = self.scope.get("extensions")
        return extensions.get(name) if extensions else None

    @property
    def send_raw(self) -> Send:
        """The server's `send`, for a loop that sends body parts itself (`_pipe`)."""
        return self._send

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

    async def respond_error(
        self,
        exc: Exception,
        *,
        retry_after: int | None = None,
        queue: tuple[float | None, int] | None = None,
    ) -> None:
        """Answer `exc` as an OpenAI error (see `error_reply`); after a queue-events
        preamble, as an SSE `error` event (`sse_failure`)."""
        if self.preamble:
            _, data = sse_failure(
                exc, queue_ms=self.record.queue_s * 1000.0, retry_after=retry_after
            )
            self.started = True
            await self.finish(data)
            return
        status, body, headers = error_reply(
            exc, queue_ms=self.record.queue_s * 1000.0, retry_after=retry_after, queue=queue
        )
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self._armed = False
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def forward_headers(headers: Headers) -> Headers:
    """The client's headers to send upstream (hop-by-hop ones dropped). The server
    parsed them (no CR or LF can be in a name or value), so they go as they came."""
    return [(name, value) for name, value in headers if name not in _REQUEST_SKIP]


async def relay(
    session: Client,
    ex: Exchange,
    base: str,
    body: bytes | bytearray,
    *,
    stream: bool,
    meter: UsageMeter | None = None,
) -> None:
    """Send the exchange's request to `base` and relay the response to the client.

    An upstream failure is noted in the exchange's record (`upstream_failed`). Before
    the first byte to the client it is raised as an error reply; after it, an SSE
    stream is ended with an error event and anything else is cut (connection closed).

    Args:
        session: the gateway's upstream client (keep-alive pools).
        ex: the client exchange.
        base: the backend's base URL.
        body: the request body, forwarded unchanged.
        stream: relay chunk by chunk (else read the whole body, then send it at once).
        meter: told about the response (status, body or chunks) to account its tokens.

    Raises:
        GatewayError: connect error (502), timeout (504), or a 5xx status or broken
            answer before any byte was relayed (502). The message names no backend.
    """
    scope = ex.scope
    ex.record.backend = base
    began = now()
    resp: Response | None = None
    clean = False
    try:
        with UPSTREAM_ERRORS:
            resp = await session.request(
                scope["method"],
                upstream_url(base, scope),
                data=body,
                headers=forward_headers(scope["headers"]),
            )
            if resp.status >= 500:
                detail = f"HTTP {resp.status} {await _detail(resp)}".rstrip()
                raise UpstreamFailure(KIND_STATUS, "", detail)
            await _relay_response(ex, resp, began, stream=stream, meter=meter)
        clean = True
    except UpstreamFailure as failed:
        if not ex.started:
            # Not bound to a local first: this frame, held by the error's traceback,
            # would hold the error (a reference cycle, left to the cyclic collector).
            raise upstream_failed(ex, base, failed) from None
        err = upstream_failed(ex, base, failed)
        if ex.sse:
            # SSE clients (the OpenAI SDKs) raise on an error event; a bare cut could
            # read as a complete answer to some.
            await ex.chunk(sse_error_event(err))
            await ex.finish()
        # Otherwise returning without finishing makes the server close the connection:
        # the client sees a truncated response, never a well-formed but incomplete one.
    finally:
        # release() returns a fully read connection to the pool; close() drops it, which
        # tells the backend to stop generating (client gone, or an error).
        if resp is not None:
            if clean:
                resp.release()
            else:
                resp.close()


def upstream_url(base: str, scope: Scope) -> Target:
    """The backend target of the request: `base`, the path, and the query as sent.

    The route table matched the raw path exactly, so it needs no escaping; the query
    goes as the client sent it (the server checked it holds no space nor control).
    Without a query the target is the same for every request of a route and backend,
    so it is built once and kept (a few routes times a few backends).
    """
    query: bytes = scope.get("query_string", b"")
    if query:
        return Target(base, scope["path"].encode("latin-1") + b"?" + query)
    key = (base, scope["path"])
    url = _URLS.get(key)
    if url is None:
        if len(_URLS) >= _MAX_URLS:
            _URLS.clear()  # backends come and go with reloads; never grow without bound
        url = _URLS[key] = Target(base, scope["path"].encode("latin-1"))
    return url


def upstream_failed(ex: Exchange, base: str, failed: UpstreamFailure) -> GatewayError:
    """Note an upstream failure in the exchange's record and log it with the backend's
    address (which only the log and the metrics get); returns the error for the client."""
    ex.record.upstream_error = failed.kind
    cause = failed.cause
    _log.warning(
        "upstream %s: backend=%s %s %s%s: %s",
        failed.kind,
        base,
        ex.scope["method"],
        ex.scope["path"],
        " (mid-response; the response was ended)" if ex.started else "",
        f"{cause if isinstance(cause, str) else repr(cause)} {failed.detail}".rstrip(),
    )
    pool = ex.record.pool
    return failure(failed.kind, None if pool is None else pool.name, failed.detail)


async def _detail(resp: Response) -> str:
    """The start of a 5xx answer's body: the backend's own explanation, if it sends one."""
    try:
        async with asyncio.timeout(1.0):
            data = await resp.read(300)
    except _STREAM_ERRORS:
        return ""
    return data.decode("utf-8", "replace")


async def _relay_response(
    ex: Exchange,
    resp: Response,
    began: float,
    *,
    stream: bool,
    meter: UsageMeter | None,
) -> None:
    """Send the backend's answer to the client: whole, or chunk by chunk as it arrives."""
    headers = [(n, v) for n, v in resp.headers if n not in _RESPONSE_SKIP]  # names lower
    if stream:
        ex.sse = resp.content_type == "text/event-stream"
        if meter is not None:
            meter.begin(resp.status)
        # The headers go out with the first chunk: until then nothing reached the
        # client, so the request may still be taken back and queued again
        # (_preempt.py), or fail with a clean error status.
        await _pipe(ex, resp, meter, start=(resp.status, headers, began))
    else:
        await _relay_whole(ex, resp, headers, began, meter)


async def _pipe(
    ex: Exchange,
    resp: Response,
    meter: UsageMeter | _Tail | None,
    *,
    start: tuple[int, Headers, float] | None = None,
) -> None:
    """Relay the rest of the body as it arrives, then end the response. With `start`
    (status, headers, upstream start time), the response starts with the first chunk."""
    read = resp.readany
    if start is not None and not ex.started:
        chunk = await read()
        await _start(ex, *start)
        if meter is not None and chunk:
            meter.chunk(chunk)
        if not chunk or resp.complete:  # a short stream can come in one read
            await ex.finish(chunk)
            return
        await ex.chunk(chunk)
    count = None if meter is None else meter.chunk
    body = ex.extension("sluicegate.body")
    if body is not None:  # the built-in server: parts go out from the read callback
        await ex.finish(await resp.pump(body["write"], body["drain"], count))
        return
    # Another server: one ASGI message a chunk.
    send = ex.send_raw
    while True:
        chunk = await read()
        if not chunk:
            break
        if count is not None:
            count(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await ex.finish()


async def _start(ex: Exchange, status: int, headers: Headers, began: float) -> None:
    ex.record.upstream_s = now() - began
    await ex.start(status, headers)


async def _relay_whole(
    ex: Exchange,
    resp: Response,
    headers: Headers,
    began: float,
    meter: UsageMeter | None,
) -> None:
    """A non-streamed answer: buffered up to `max_buffered_response_bytes` and sent with
    a content-length; a larger one is relayed as it arrives, never held whole."""
    cap = ex.server.max_buffered_response_bytes if ex.server is not None else 1 << 62
    read = resp.readany
    parts: list[bytes] = []
    total = 0
    length = resp.content_length
    while length is None or length <= cap:
        chunk = await read()
        if not chunk:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            ex.record.upstream_s = now() - began
            if meter is not None:
                meter.body(resp.status, data)
            headers.append((b"content-length", str(len(data)).encode()))
            await ex.start(resp.status, headers)
            await ex.finish(data)
            return
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            break
    ex.record.upstream_s = now() - began
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await ex.start(resp.status, headers)
    for part in parts:
        await ex.chunk(part)
    tail = _Tail(parts[-1] if parts else b"")
    del parts
    await _pipe(ex, resp, None if meter is None else tail)
    if meter is not None:
        meter.body(resp.status, tail.data)


@final
class _Tail:
    """The last few KiB of a relayed body, where its ``usage`` object is (no copy per chunk)."""

    __slots__ = ("_last", "_prev")

    def __init__(self, first: bytes) -> None:
        self._prev = b""
        self._last = first

    def chunk(self, data: bytes) -> None:
        self._prev, self._last = self._last, data

    @property
    def data(self) -> bytes:
        return self._prev[-_TAIL:] + self._last
