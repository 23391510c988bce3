"""A small HTTP/1.1 client for the gateway's data path (issue 17): the wire.

One asyncio protocol per connection (`_Connection`), httptools (llhttp) to parse the
answers; `Response` is what a request returns. The keep-alive pools and `Client` are in
`_client.py`. It exists for speed: aiohttp's client cost about two thirds of a relayed
request's CPU (docs/design.md, "The hot path"). It does only what the relay needs, and
does it strictly:

* One request at a time per connection; bytes from a backend nobody asked, or a second
  answer to one request, are a protocol error (no response desynchronisation).
* Limits against hostile backends: the head (status line and headers) at most
  `MAX_HEAD` bytes, a header line `MAX_HEADER_LINE`, `MAX_HEADERS` headers; llhttp
  checks the status line, the chunk framing and content-length strictly. A violation
  fails the read (`ProtocolError`) and closes the connection.
* Bodies framed by content-length, chunked, or by the close of the connection.
* Timeouts: no byte for `read_timeout` while a read waits (the head or any part of the
  body). One lazily re-armed loop timer per response: a read stamps the time, the timer
  checks the stamp when it fires, so a chunk costs no timer.
* Backpressure: above `HIGH_WATER` unread bytes the connection stops reading; under
  `Response.pump`, when the body's sink says it is full.
* Cancelling a read, or closing a response before its end, closes the connection:
  the backend sees it (an engine stops generating).

Failures are `HTTPClientError` (`ConnectError`, `ConnectionBroken`, `ProtocolError`) or
`TimeoutError` (`ConnectTimeout`, `ReadTimeout`). HEAD, redirects, proxies, cookies,
decompression and HTTP/2 are out of scope.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, final

import httptools

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._client import _Pool

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionBroken",
    "HTTPClientError",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "Target",
]

#: The status line and headers of an answer, in bytes.
MAX_HEAD: Final = 64 * 1024
#: One header (name and value).
MAX_HEADER_LINE: Final = 8190
#: Headers in one answer.
MAX_HEADERS: Final = 128
#: Unread body bytes above which the connection stops reading (the client is slow).
HIGH_WATER: Final = 256 * 1024

Headers = list[tuple[bytes, bytes]]


class HTTPClientError(Exception):
    """An upstream request failed (not a timeout: those are `TimeoutError`)."""


class ConnectError(HTTPClientError):
    """The backend could not be reached (refused, unreachable, DNS)."""


class ConnectionBroken(HTTPClientError):
    """The connection closed or failed before the end of the answer."""


class ProtocolError(ConnectionBroken):
    """The backend sent invalid HTTP or passed a limit; the connection was closed."""


class ConnectTimeout(TimeoutError):
    """No connection (new or free) within `connect_timeout`."""


class ReadTimeout(TimeoutError):
    """No byte from the backend for `read_timeout` while waiting for one."""


@final
class Target:
    """Where a request goes: the backend's base URL and the request target (path and
    query) as bytes. Build one per route and backend and keep it."""

    __slots__ = ("base", "path")

    def __init__(self, base: str, path: bytes) -> None:
        self.base = base
        self.path = path

    def __repr__(self) -> str:
        return f"Target({self.base!r}, {self.path!r})"


@final
class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time. The parser's callbacks fill
    the current answer's state; `readany` hands the body out as it arrives."""

    __slots__ = (
        "_began",
        "_buf",
        "_buffered",
        "_count",
        "_head_size",
        "_loop",
        "_parser",
        "_paused",
        "_pool",
        "_since",
        "_timer",
        "_waiter",
        "_write",
        "busy",
        "closed",
        "done",
        "error",
        "head_done",
        "headers",
        "idle_since",
        "keep_alive",
        "limit",
        "status",
        "transport",
        "until_close",
    )

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.limit: float | None = pool.read_timeout
        self.closed = self.busy = False
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._since = 0.0
        #: While `pump` runs: the body's sink, and what sees each part first.
        self._write: Callable[[bytes], bool] | None = None
        self._count: Callable[[bytes], object] | None = None
        self._reset()

    def _reset(self) -> None:
        """Ready for the next exchange."""
        self.status = 0
        self.headers: Headers = []
        self.head_done = self.done = self.until_close = self._began = self._paused = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self._buf: list[bytes] = []
        self._buffered = self._head_size = 0

    # -- asyncio protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.error is not None:
            self.fail(ProtocolError("bytes from the backend that no request asked for"))
            return
        if not self.head_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, ProtocolError) else exc
            self.fail(ProtocolError(f"invalid HTTP from the backend: {cause}"))
            return
        if not self.head_done and self._head_size > MAX_HEAD:
            self.fail(ProtocolError(f"the answer's head passed {MAX_HEAD} bytes"))
        elif self._write is not None and self._buf and not self.done and not self._paused:
            self._hand_out(self._write)

    def _take(self) -> bytes:
        """The body bytes arrived and not yet read, in one piece; the buffer is empty."""
        buf = self._buf
        self._buf = []
        self._buffered = 0
        return buf[0] if len(buf) == 1 else b"".join(buf)

    def _resume(self) -> None:
        """Read again, if reading was paused (backpressure) and the connection is open."""
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _hand_out(self, write: Callable[[bytes], bool]) -> None:
        """`pump`: one write for what one read brought (the parts are joined), from
        this callback: no task step per part. The end of the body is left to the pump,
        which returns it (the caller sends it with the response's end: one write)."""
        data = self._take()
        self._since = self._loop.time()  # the read timer's "last byte"
        try:
            if self._count is not None:
                self._count(data)
            if write(data):  # the client's socket is full: stop reading
                self._paused = True
                if self.transport is not None:
                    self.transport.pause_reading()
                self._wake()
        except Exception as exc:  # the pump raises it (not an HTTP error)
            self._write = None
            self.error = exc
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser holds this protocol's callbacks: dropped, a closed connection is
        # freed by reference counting, not left to the cyclic collector.
        del self._parser
        self.closed = True
        self._pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.busy or self.done:
            return
        if exc is None and self.until_close and self.head_done:
            self.done = True  # a body delimited by the close of the connection
            self._wake()
        elif self.error is None:
            reason = "closed" if exc is None else f"failed ({exc!r})"
            self.error = ConnectionBroken(f"the connection {reason} before the end of the answer")
            self._wake()

    def pause_writing(self) -> None:
        """Requests are written whole; the socket's buffer holds them."""

    def resume_writing(self) -> None:
        """See `pause_writing`."""

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._began:
            raise ProtocolError("a second answer to one request")
        self._began = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_HEADER_LINE:
            raise ProtocolError(f"a header passed {MAX_HEADER_LINE} bytes")
        if len(self.headers) >= MAX_HEADERS:
            raise ProtocolError(f"more than {MAX_HEADERS} headers")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ProtocolError("the backend switched protocols")
            self.headers, self._began, self._head_size = [], False, 0  # 1xx: the answer follows
            return
        self.status = status
        self.head_done = True
        # Asked now: llhttp forgets the answer's flags once it is complete.
        self.keep_alive = self._parser.should_keep_alive()
        # llhttp reads a body with neither length nor chunked framing until the close.
        self.until_close = not self.keep_alive and not any(
            n == b"content-length" or (n == b"transfer-encoding" and v.endswith(b"chunked"))
            for n, v in self.headers
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buf.append(body)
        if self._write is not None:
            return  # `pump`: `data_received` hands the read's parts out at its end
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:  # else the end of a 1xx answer
            self.done = True
            self._wake()

    # -- the exchange -----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """End the exchange with `exc` (raised by the next read) and close."""
        if self.error is None:
            self.error = exc
        self._wake()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    async def wait(self) -> None:
        """Wait for the backend's next bytes, within `limit` seconds."""
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        if self.limit is not None:
            self._since = loop.time()
            if self._timer is None:
                self._timer = loop.call_at(self._since + self.limit, self._check)
        await waiter  # cancelled: the caller closes the connection

    def _check(self) -> None:
        self._timer = None
        if self._waiter is None or self.limit is None:
            return  # not waiting: the next wait arms it again
        due = self._since + self.limit
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.fail(ReadTimeout(f"no byte from the backend for {self.limit:g} s"))

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some when there
        are none); b"" at the end of the body."""
        while True:
            if self._buf:
                data = self._take()
                self._resume()
                return data
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            await self.wait()

    async def pump(
        self,
        write: Callable[[bytes], bool],
        drain: Callable[[], Awaitable[None]],
        count: Callable[[bytes], object] | None,
    ) -> bytes:
        """Hand the body to `write` as it arrives, from the protocol's own callback
        (`_hand_out`); returns its last part, unwritten (see `Response.pump`)."""
        self._count = count
        try:
            while True:
                if self._buf:  # arrived before the pump, or the end of the body
                    data = self._take()
                    if count is not None:
                        count(data)
                    if self.done:
                        return data
                    if write(data):
                        await drain()
                    continue
                if self.error is not None:
                    raise self.error
                if self.done:
                    return b""
                self._write = write
                self._resume()
                await self.wait()
                if self._paused and self.error is None:
                    await drain()  # `write` asked for it (`_hand_out` paused the reading)
        finally:
            self._write = self._count = None

    def unread(self, data: bytes) -> None:
        """Put bytes back at the front of the body (`Response.read` of a few bytes)."""
        self._buf.insert(0, data)
        self._buffered += len(data)

    def finish(self) -> None:
        """The caller is done with the answer: keep the connection if it may serve
        another request, else close it."""
        self.busy = False
        if (
            self.done
            and not self.closed
            and self.error is None
            and not self._buf
            and self.keep_alive
        ):
            # The read timer stays: due later, it finds the connection not waiting
            # and lapses, or waiting on a later request and re-arms for that wait's
            # deadline (no timer per request on a busy connection).
            self._reset()
            self._pool.park(self)
        else:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # A raised error's traceback holds frames that hold this connection: the
            # closed connection needs no error, and neither is left to the collector.
            self.error = None
            self.close()


@final
class Response:
    """A backend's answer: status and headers (names lower-cased), the body as it
    arrives (`readany`, `read`). `release` when the body was read to its end (the
    connection goes back to the pool), else `close` (the connection is closed)."""

    __slots__ = ("_conn", "_type", "content_length", "headers", "readany", "status")

    readany: Callable[[], Awaitable[bytes]]

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status: int = conn.status
        self.headers: Headers = conn.headers
        #: Read the body bytes that arrived; b"" at its end.
        self.readany = conn.readany
        self.content_length: int | None = None
        self._type = b""
        for name, value in self.headers:
            if name == b"content-length":
                self.content_length = int(value)  # llhttp checked it is digits
            elif name == b"content-type":
                self._type = value

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters (aiohttp's default when
        absent)."""
        if not self._type:
            return "application/octet-stream"
        return self._type.split(b";", 1)[0].strip().lower().decode("latin-1")

    async def pump(
        self,
        write: Callable[[bytes], bool],
        drain: Callable[[], Awaitable[None]],
        count: Callable[[bytes], object] | None = None,
    ) -> bytes:
        """Relay the body to `write` as it arrives; return its last part, not written,
        for the caller to send with the end of its own response (one write, not two).

        Parts go out from the connection's own read callback, one write per read (the
        parts one read brought are joined), so a relayed part costs no Future and no
        task step. `count`, if given, sees every part first, the last one included.
        `write` returns True when its side cannot take more now: reading stops until
        `drain()` returns. The read timeout applies as to `readany`; an exception from
        `write` or `count` is raised here, as are the read's failures.
        """
        return await self._conn.pump(write, drain, count)

    @property
    def complete(self) -> bool:
        """The whole body arrived and was read."""
        conn = self._conn
        return conn.done and not conn._buf

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` body bytes (fewer at the end), or with n < 0 the rest of the body."""
        if n >= 0:
            data = await self.readany()
            if len(data) > n:
                self._conn.unread(data[n:])
                data = data[:n]
            return data
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def release(self) -> None:
        """The body was read: the connection may serve the next request."""
        self._conn.finish()

    def close(self) -> None:
        """Close the connection now (the backend sees it)."""
        conn = self._conn
        conn.busy = False
        conn.close()
        conn.finish()
