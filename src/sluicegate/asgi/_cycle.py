"""One request and its response on an HTTP/1.1 connection, as an ASGI app sees them:
the ``receive`` and ``send`` callables of `HttpServer` (`_server`).

The request body is kept as the parser delivered it and handed over whole on the next
``receive()`` (one part when it came in one read: the usual case, with no Future).
After the last part, ``receive()`` waits until the client leaves or the response is
complete, and then says ``http.disconnect`` (as uvicorn does; the gateway's disconnect
watch relies on it).

A response with a content-length is written with its first body part (one write, one
syscall, for the usual whole answer); one without is framed chunked (HTTP/1.1) or
delimited by the close (HTTP/1.0), and its head goes with the first body part sent in
the same loop iteration, or alone at the end of that iteration. Sends after the client left
return quietly, as uvicorn's do: the app learns of it from ``receive()``, or, cheaper,
from the ``sluicegate.disconnect`` scope extension (``{"watch": callable}``: called
with a callback, run once if the client leaves before the response is complete; it
returns the task running the app). The ``sluicegate.body`` extension (``{"write":
callable, "drain": async callable}``) sends body parts from a plain call (`Cycle.write`),
so a relay can write from its upstream connection's read callback.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._server import Connection
    from ._toolkit import App, Message, Scope

__all__ = ["Cycle"]

_log = logging.getLogger("sluicegate.http")

_STATUS_LINES: Final = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
_DISCONNECT: Final[Message] = {"type": "http.disconnect"}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Above this much body received and not yet read by the app, the socket is not read.
HIGH_WATER: Final = 64 * 1024
#: A deferred head is joined to a body part up to this size (one write); past it,
#: two writes cost less than the copy.
_JOIN_BELOW: Final = 64 * 1024
_ERROR_503: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 24\r\nconnection: close\r\n\r\nthe server is stopping\r\n"
)
_ERROR_500: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


@final
class Cycle:
    """The state of one request/response on `conn` (see the module)."""

    __slots__ = (
        "body",
        "body_done",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "delivered",
        "disconnected",
        "expect_continue",
        "head_request",
        "http11",
        "keep_alive",
        "no_body",
        "pending",
        "remaining",
        "scope",
        "started",
        "task",
        "waiter",
        "watcher",
    )

    def __init__(
        self,
        conn: Connection,
        scope: Scope,
        *,
        keep_alive: bool,
        http11: bool,
        expect_continue: bool,
    ) -> None:
        self.conn = conn
        self.scope: Scope | None = scope  # the app's once it runs (`run`)
        self.keep_alive = keep_alive
        self.http11 = http11
        self.expect_continue = expect_continue
        self.head_request = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.delivered = False
        self.disconnected = False
        self.started = False
        self.complete = False
        self.chunked = False
        self.no_body = False
        self.pending: bytes | None = None  # the head, held for the first body part
        self.remaining: int | None = None  # content-length still to send
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.watcher: Callable[[], object] | None = None

    def watch(self, callback: Callable[[], object]) -> asyncio.Task[None] | None:
        """Call `callback` once if the client leaves before the response is complete
        (the ``sluicegate.disconnect`` extension: no pending ``receive()``, no task).
        Returns the task running the app, the one a watcher cancels (so the app need
        not look it up: ``asyncio.current_task`` is a Python call in 3.11)."""
        if self.disconnected:
            self.conn.loop.call_soon(callback)
        else:
            self.watcher = callback
        return self.task

    def lost(self) -> None:
        """The client left."""
        self.disconnected = True
        self.wake()
        watcher, self.watcher = self.watcher, None
        if watcher is not None and not self.complete:
            watcher()

    def wake(self) -> None:
        """Something `receive()` waits for happened (body, disconnect, completion)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.expect_continue:
            self.expect_continue = False
            if not self.started and not self.disconnected:
                self.conn.transport.write(_CONTINUE)
        while not (self.disconnected or self.complete):
            body = self.body
            if body or (self.body_done and not self.delivered):
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self.buffered = 0
                more = not self.body_done
                if more:
                    self.conn.resume_reading()
                else:
                    self.delivered = True
                return {"type": "http.request", "body": data, "more_body": more}
            if not self.body_done:
                self.conn.resume_reading()
            waiter = self.waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return _DISCONNECT

    # -- send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("http.response.body outside of a started, open response")
            # A plain call, not a coroutine: this runs once per relayed chunk.
            if not self.disconnected and self._body(
                message.get("body", b""), message.get("more_body", False)
            ):
                await self.conn.drain()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            if not self.disconnected:
                self._head(message["status"], message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def write(self, body: bytes) -> bool:
        """Send a body part, more to follow, from a plain call: the ``sluicegate.body``
        extension, for a relay that writes from a protocol callback. True: wait for the
        extension's ``drain()`` before the next part. After the client left, nothing."""
        if not self.started or self.complete:
            raise RuntimeError("http.response.body outside of a started, open response")
        return not self.disconnected and self._body(body, True)

    def _head(self, status: int, headers: Any) -> None:
        parts = [_status_line(status)]
        length: int | None = None
        chunked = close = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = True  # the app asks for chunks; the framing is ours
            elif lname == b"connection" and value.lower() == b"close":
                close = True
            parts += (name, b": ", value, b"\r\n")
        self.no_body = no_body = self.head_request or status in (204, 304) or status < 200
        if no_body:
            chunked = False
        elif length is None and not chunked:
            if self.http11:
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the close ends the body
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
        self.keep_alive = self.keep_alive and not close
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.chunked = chunked
        if length is not None and not no_body:
            self.remaining = length
            self.pending = head
        elif no_body:
            self.conn.transport.write(head)
        else:
            # A streamed answer's first part most often follows in this same task
            # step (a relay sends the head with the first chunk): it takes the head
            # along, one write, and the flush at the end of the step finds nothing.
            self.pending = head
            self.conn.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        pending = self.pending
        if pending is not None:
            self.pending = None
            if not self.disconnected and not self.conn.transport.is_closing():
                self.conn.transport.write(pending)

    def _body(self, body: bytes, more: bool) -> bool:
        """Write a body part; True if the sender should wait for the socket to drain."""
        if self.no_body:
            body = b""
        elif self.remaining is not None:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("response body longer than its content-length")
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
        pending = self.pending
        if pending is not None:
            self.pending = None
            if len(data) < _JOIN_BELOW:
                data = pending + data
            else:
                self.conn.transport.write(pending)
        conn = self.conn
        if data:
            conn.transport.write(data)
        if not more:
            if self.remaining:  # shorter than announced: only the close can end it
                self.keep_alive = False
            self.complete = True
            self.wake()
            conn.response_done(self)
            return False
        return conn.write_paused

    # -- the app's end ------------------------------------------------------------------

    async def run(self, app: App) -> None:
        """Run `app` on this request (the body of its task), then end the response if
        the app did not. A wrapper, not a done callback: the end runs in the same task
        step, with no callback scheduled per request.

        The scope holds this cycle (its extensions are bound methods), and a watcher
        holds the app's state, which holds the scope: both links are dropped here, so a
        request's objects are freed by reference counting when it ends. A cycle would
        leave them to the cyclic collector, whose passes under load stopped the loop for
        1-30 ms (docs/design.md, "No reference cycles per request").
        """
        scope, self.scope = self.scope, None
        if scope is None:
            raise RuntimeError("a request cycle runs once")
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._ended(_ERROR_503)  # by the server, at the end of a shutdown's grace
            raise
        except Exception:
            _log.exception("exception in the ASGI application")
            self._ended(_ERROR_500)
        else:
            if not self.complete and self.started and not self.disconnected:
                _log.error("the ASGI application returned before completing its response")
            self._ended(_ERROR_500)
        finally:
            self.task = None
            self.watcher = None

    def _ended(self, reply: bytes) -> None:
        """The app is done: an unstarted response gets `reply`; one started but not
        complete is cut by the close (the client sees a truncated answer)."""
        if self.complete:
            return
        self.complete = True
        self.keep_alive = False
        self.wake()
        if not self.disconnected:
            if not self.started:
                self.conn.transport.write(reply)
            else:
                self._flush_head()  # the client sees a truncated answer, not none
        self.conn.response_done(self)
