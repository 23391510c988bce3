"""uvicorn's httptools protocol with limits against hostile clients, for ``server.http:
uvicorn`` (the built-in server, `sluicegate.asgi.HttpServer`, has the same ones).

uvicorn (0.30-0.54) has none of these for httptools: no bound on header bytes (the
parser concatenates a header's pieces, so one 128 MB header froze the loop for seconds),
no header or body read timeout (a connection that sends nothing is kept forever; its
keep-alive timer only starts after a response), and ``limit_concurrency`` answers 503
only once a request's headers are complete, counting the slow connections themselves,
so a slowloris flood turns every good client away too. This subclass adds:

* ``max_header_bytes``: the request line and headers are counted as they arrive;
  past the limit, 431 before the parser has buffered more than one read; the rest is
  read and dropped for up to 2 s (so the client can read the 431), then the close.
* ``header_timeout``: from the connection (or the first byte of a keep-alive request)
  to the end of the headers; then 408 and close.
* ``body_timeout``: from the end of the headers to the end of the body; then 408 (if
  no response started) and close; the handler sees a disconnect.
* ``max_connections``: at the cap, the connection that has waited longest without a
  request in progress (silent, trickling headers, or idle keep-alive) is closed to
  make room; only when every connection is busy is the newcomer refused (503, close),
  without reading anything. Good clients, who send a request at once, keep being
  served while slow ones are shed.

Cost on the data path: one timer per connection and per request that does not arrive
in one read (re-armed lazily, never per chunk); a counter per read while in the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..asgi import Limits, Replies, shed_oldest

if TYPE_CHECKING:
    import asyncio

__all__ = ["guarded_protocol"]

#: Phases of a connection.
_IDLE: Final = 0  # after a response, before the next request's first byte
_HEAD: Final = 1  # connected, or a request's first bytes came: waiting for the headers
_BODY: Final = 2  # headers in, waiting for the rest of the body
_BUSY: Final = 3  # the request is read; the application is answering it
_DISCARD: Final = 4  # answered 431: the rest is read and dropped until the close
#: After a 431, the rest of the request is read and dropped for up to this long (or
#: this many bytes) before closing, so the client, still sending, can read the answer:
#: closing with unread data would reset the connection and lose it.
_LINGER_S: Final = 2.0
_LINGER_BYTES: Final = 256 * 1024 * 1024


class _GuardedProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with header, time and connection limits (see the module)."""

    # Set per server by `guarded_protocol`.
    max_header_bytes: ClassVar[int]
    header_timeout: ClassVar[float]
    body_timeout: ClassVar[float]
    max_connections: ClassVar[int]
    #: Connections without a request in progress, oldest first (dicts keep order).
    waiting: ClassVar[dict[_GuardedProtocol, None]]
    replies: ClassVar[Replies]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEAD
        self._head_bytes = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.max_connections and not shed_oldest(self.waiting):
            self._refused = True
            transport.write(self.replies.refused)  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self.waiting[self] = None
        self._deadline = self.loop.time() + self.header_timeout
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _DISCARD:
            self._head_bytes += len(data)
            if self._head_bytes > _LINGER_BYTES:
                self.transport.close()
            return
        if self._phase == _IDLE:
            self._start_head()
        if self._phase == _HEAD:
            self._head_bytes += len(data)
        super().data_received(data)
        phase = self._phase
        if phase == _HEAD and self._head_bytes > self.max_header_bytes:
            self.waiting.pop(self, None)
            self._phase = _DISCARD
            self.transport.write(self.replies.too_large)
            self.loop.call_later(_LINGER_S, self.transport.close)
        elif phase in (_HEAD, _BODY):
            timer = self._timer
            # A timer due later than the deadline (the body's can be the sooner) is
            # replaced; one due sooner re-arms itself when it fires.
            if timer is None or timer.when() > self._deadline:
                if timer is not None:
                    timer.cancel()
                if not self.transport.is_closing():
                    self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _start_head(self) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        self._deadline = self.loop.time() + self.header_timeout

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != _HEAD:  # a pipelined request
            self._start_head()

    def on_headers_complete(self) -> None:
        self.waiting.pop(self, None)
        self._phase = _BODY
        self._deadline = self.loop.time() + self.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _BUSY
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # With a pipelined request now started, the connection is not idle.
        if (
            self._phase == _BUSY
            and self.cycle.response_complete
            and not self.transport.is_closing()
        ):
            self._phase = _IDLE
            self.waiting[self] = None

    # -- limits ---------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase not in (_HEAD, _BODY) or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        if self._phase == _HEAD:
            self._close_with(self.replies.head_timeout)
        elif self.cycle is not None and not self.cycle.response_started:
            self._close_with(self.replies.body_timeout)
        else:
            self.transport.close()

    def _close_with(self, reply: bytes) -> None:
        self.waiting.pop(self, None)
        self.transport.write(reply)
        self.transport.close()


def guarded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """A protocol class for one server, with `limits` and its own registry (the
    answers past a limit are the built-in server's, `sluicegate.asgi.Replies`)."""
    return type(
        "GuardedHttpToolsProtocol",
        (_GuardedProtocol,),
        {
            "max_header_bytes": limits.max_header_bytes,
            "header_timeout": limits.header_timeout,
            "body_timeout": limits.body_timeout,
            "max_connections": limits.max_connections,
            "waiting": {},
            "replies": Replies(limits),
        },
    )
