"""A lean HTTP/1.1 ASGI server on asyncio protocols and httptools, with limits against
hostile clients: the gateway's client-facing server (issue 17).

It serves what our apps need and no more: HTTP/1.1 and 1.0, keep-alive, pipelining
(one request at a time, the next one held with reading paused), ``Expect:
100-continue``, chunked or content-length responses, back-pressure both ways, and
``http.disconnect``. No websockets, no upgrades (an upgrade request is answered as plain
HTTP and the connection closed), no lifespan (the app's owner starts and stops it), no
``date`` or ``server`` header (a proxy relays upstream's). Against uvicorn + the same
app it saves about a tenth of the gateway's CPU per request: no per-request middleware
layers, flow-control objects or header re-validation, one write for a whole answer.

Limits, each the answer to an attack on a plain server (`Limits`):

* ``max_header_bytes``: the request line and headers are counted as they arrive;
  past the limit, 431 before the parser has buffered more than one read; the rest is
  read and dropped for up to 2 s (so the client, still sending, can read the 431:
  closing on unread data would reset the connection), then the close.
* ``header_timeout``: from the connection (or the first byte of a keep-alive request)
  to the end of the headers; then 408 and close. Bytes that keep coming do not extend it.
* ``body_timeout``: from the end of the headers to the end of the body; then 408 (if no
  response started) and close; the app sees a disconnect.
* ``keep_alive_timeout``: an idle connection between requests is closed after it.
* ``max_connections``: at the cap, the connection that has waited longest without a
  request in progress (silent, trickling headers, or idle keep-alive) is closed to make
  room; only when every connection is busy is the newcomer refused (503, close), without
  reading anything. Good clients keep being served while slow ones are shed.

Each connection has at most one timer, due at its earliest deadline and re-armed
lazily when it fires (never per request on a busy keep-alive connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast, final
from urllib.parse import unquote

import httptools
import orjson

from ._cycle import HIGH_WATER, Cycle

if TYPE_CHECKING:
    import socket

    from ._toolkit import App

__all__ = ["Connection", "HttpServer", "Limits", "Replies", "shed_oldest"]

_log = logging.getLogger("sluicegate.http")

#: Phases of a connection.
_IDLE: Final = 0  # after a response, before the next request's first byte
_HEAD: Final = 1  # connected, or a request's first bytes came: waiting for the headers
_BODY: Final = 2  # headers in, waiting for the rest of the body
_BUSY: Final = 3  # the request is read; the app is answering it
_DISCARD: Final = 4  # answered 431: the rest is read and dropped until the close
_LINGER_S: Final = 2.0
_LINGER_BYTES: Final = 256 * 1024 * 1024
#: At shutdown, how long apps cancelled past the grace get to end their responses.
_CANCEL_WAIT_S: Final = 5.0
_ASGI: Final = {"version": "3.0", "spec_version": "2.4"}


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may take of the server (see the module)."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 4096


def _reply(status: int, reason: str, code: str, message: str, kind: str) -> bytes:
    """A whole error response with an OpenAI-shaped body, closing the connection."""
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


@final
class Replies:
    """The server's own answers to a client past a limit, built once from the limits
    (also uvicorn's guarded protocol's, `gateway/_protocol.py`)."""

    def __init__(self, limits: Limits) -> None:
        bad = "invalid_request_error"
        self.too_large = _reply(
            431, "Request Header Fields Too Large", "request_header_fields_too_large",
            f"the request line and headers exceed server.max_header_bytes="
            f"{limits.max_header_bytes}", bad,
        )  # fmt: skip
        self.head_timeout = _reply(
            408, "Request Timeout", "request_timeout",
            f"the request headers took longer than server.header_timeout="
            f"{limits.header_timeout:g} s", bad,
        )  # fmt: skip
        self.body_timeout = _reply(
            408, "Request Timeout", "request_timeout",
            f"the request body took longer than server.body_timeout="
            f"{limits.body_timeout:g} s", bad,
        )  # fmt: skip
        self.refused = _reply(
            503, "Service Unavailable", "too_many_connections",
            f"the gateway has its maximum of {limits.max_connections} connections open",
            "service_unavailable",
        )  # fmt: skip
        self.bad_request = _reply(
            400, "Bad Request", "bad_request", "the request is not valid HTTP/1.1", bad
        )


class Connection(asyncio.Protocol):
    """One client connection: parses requests and runs the app for each, in order."""

    __slots__ = (
        "_body_cycle",
        "_deadline",
        "_drain",
        "_expect",
        "_head_bytes",
        "_headers",
        "_parser",
        "_phase",
        "_pipeline",
        "_read_paused",
        "_timer",
        "_url",
        "client",
        "cycle",
        "loop",
        "server",
        "sockname",
        "transport",
        "write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = cast("asyncio.Transport", None)
        self.client: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self._phase = _HEAD
        self._head_bytes = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.cycle: Cycle | None = None  # the request the app is answering
        self._body_cycle: Cycle | None = None  # the request whose body is being read
        self._pipeline: deque[Cycle] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast("asyncio.Transport", transport)
        server = self.server
        if len(server.connections) >= server.limits.max_connections and not server.make_room():
            transport.write(server.replies.refused)
            transport.close()
            return
        server.connections.add(self)
        server.waiting[self] = None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self.sockname = (str(local[0]), int(local[1]))
        self._deadline = self.loop.time() + server.limits.header_timeout
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser holds this protocol's callbacks, so the two form a reference cycle:
        # broken here, a closed connection is freed by reference counting, not left to
        # the cyclic collector (a client that opens a connection per request would
        # otherwise leave one such cycle per request). Nothing parses after the close.
        del self._parser
        server = self.server
        if self not in server.connections:
            return  # refused at the cap
        server.connections.discard(self)
        server.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for cycle in (self.cycle, self._body_cycle, *self._pipeline):
            if cycle is not None:
                cycle.lost()
        self._pipeline.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        server.lost()

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _DISCARD:
            self._head_bytes += len(data)
            if self._head_bytes > _LINGER_BYTES:
                self.transport.close()
            return
        if phase == _IDLE:
            self._start_head()
        if self._phase == _HEAD:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade()
        except httptools.HttpParserCallbackError as exc:  # a bug of ours, not the client's
            _log.error("HTTP parser callback failed", exc_info=exc.__context__ or exc)
            self._bad_request(exc)
        except httptools.HttpParserError as exc:
            self._bad_request(exc)
        self._after_read()

    def _after_read(self) -> None:
        phase = self._phase
        if phase == _HEAD and self._head_bytes > self.server.limits.max_header_bytes:
            self.server.waiting.pop(self, None)
            self._phase = _DISCARD
            self.transport.write(self.server.replies.too_large)
            self.loop.call_later(_LINGER_S, self.transport.close)
        elif phase in (_HEAD, _BODY) and not self.transport.is_closing():
            self._arm()

    def _start_head(self) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        self._deadline = self.loop.time() + self.server.limits.header_timeout

    def _bad_request(self, exc: Exception) -> None:
        _log.debug("bad request from %s: %s", self.client, exc)
        self._phase = _DISCARD
        self.server.waiting.pop(self, None)
        if self.cycle is None:
            self.transport.write(self.server.replies.bad_request)
            self.transport.close()
        else:  # answer what came before, then close
            self._pause_reading()
            self.cycle.keep_alive = False

    def _unsupported_upgrade(self) -> None:
        """No protocol switch here: the request is answered, then the connection closes
        (what follows the head belongs to the other protocol)."""
        self._phase = _DISCARD
        self._pause_reading()
        reading, self._body_cycle = self._body_cycle, None
        if reading is not None:  # its body, if any, is not HTTP/1.1's to frame
            reading.body_done = True
            reading.wake()
        for cycle in (self.cycle, *self._pipeline):
            if cycle is not None:
                cycle.keep_alive = False
        if self.cycle is None:
            self.transport.close()

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect = False
        if self._phase != _HEAD:  # a pipelined request
            self._start_head()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        server = self.server
        server.waiting.pop(self, None)
        self._phase = _BODY
        self._deadline = self.loop.time() + server.limits.body_timeout
        parser = self._parser
        version = parser.get_http_version()
        scope = self._scope(parser.get_method().decode("ascii"), version)
        cycle = Cycle(
            self,
            scope,
            keep_alive=parser.should_keep_alive() and not server.stopping,
            http11=version == "1.1",
            expect_continue=self._expect,
        )
        scope["extensions"] = {
            "sluicegate.disconnect": {"watch": cycle.watch},
            "sluicegate.body": {"write": cycle.write, "drain": self.drain},
        }
        self._body_cycle = cycle
        if self.cycle is None:
            self._run(cycle)
        else:
            self._pipeline.append(cycle)
            self._pause_reading()

    def _scope(self, method: str, version: str) -> dict[str, Any]:
        url = self._url
        if url[:1] == b"/":
            raw, _, query = url.partition(b"?")
            raw = raw.partition(b"#")[0]
        else:  # absolute form (or "*"): let the parser split it
            parsed = httptools.parse_url(url)
            raw, query = parsed.path or b"/", parsed.query or b""
        text = raw.decode("latin-1")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.sockname,
            "client": self.client,
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": unquote(text) if "%" in text else text,
            "raw_path": raw,
            "query_string": query,
            "headers": self._headers,
        }

    def on_body(self, body: bytes) -> None:
        cycle = self._body_cycle
        if cycle is None or cycle.complete:
            return  # answered already: the rest of its body is read and dropped
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self._body_cycle
        self._body_cycle = None
        if cycle is not None:
            cycle.body_done = True
            cycle.wake()
        # The timer stays: due at the header or body deadline, it finds the connection
        # busy and lapses, or idle and re-arms for the keep-alive deadline (a busy
        # keep-alive connection creates no timer per request).
        if self._phase == _DISCARD:
            return
        if self.cycle is None and not self._pipeline:
            self._idle()
        else:
            self._phase = _BUSY

    # -- the app's side -----------------------------------------------------------------

    def _run(self, cycle: Cycle) -> None:
        self.cycle = cycle
        cycle.task = self.loop.create_task(cycle.run(self.server.app))

    def response_done(self, cycle: Cycle) -> None:
        """`cycle`'s response is complete: close, or go on with the next request."""
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or self.server.stopping:
            self.transport.close()
            return
        if self._pipeline:
            self._run(self._pipeline.popleft())
            if not self._pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        if self._phase == _BUSY:
            self._idle()

    def _idle(self) -> None:
        if self.transport.is_closing():
            return
        self._phase = _IDLE
        self.server.waiting[self] = None
        self._deadline = self.loop.time() + self.server.limits.keep_alive_timeout
        self._arm()

    def _arm(self) -> None:
        """Make the timer due by the deadline: one due later is replaced; one due sooner
        re-arms itself when it fires (on a busy connection, the usual case: no new
        timer per request)."""
        timer = self._timer
        if timer is None or timer.when() > self._deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and not self._pipeline and self._phase != _DISCARD:
            self._read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark (or the client
        left)."""
        if not self.write_paused or self.transport.is_closing():
            return
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()
        await self._drain

    # -- limits -------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase not in (_IDLE, _HEAD, _BODY) or self.transport.is_closing():
            return  # busy: `_idle` arms the next one
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        replies = self.server.replies
        reading = self._body_cycle
        if phase == _HEAD:
            self._close_with(replies.head_timeout)
        elif phase == _BODY and reading is not None and not reading.started:
            self._close_with(replies.body_timeout)
        else:
            self.transport.close()

    def _close_with(self, reply: bytes) -> None:
        self.server.waiting.pop(self, None)
        self.transport.write(reply)
        self.transport.close()

    def shut(self) -> None:
        """The server stops: close now if nothing is being answered, else after it."""
        if self.cycle is None:
            self.transport.close()
            return
        self.cycle.keep_alive = False
        for cycle in self._pipeline:
            cycle.keep_alive = False


def shed_oldest(waiting: dict[Any, None]) -> bool:
    """Close the first connection of `waiting` (connections without a request in
    progress, oldest first) to make room for a new one; False if there is none."""
    victim = next(iter(waiting), None)
    if victim is None:
        return False
    del waiting[victim]
    victim.transport.close()
    return True


@final
class HttpServer:
    """Serve an ASGI `app` on listening sockets (see the module).

    Driven like uvicorn's `Server` by `sluicegate.asgi.serving`: ``startup(sockets=)``
    and ``shutdown(sockets=)``.

    Args:
        app: the ASGI app (http scopes only).
        limits: what a client may take.
        graceful_timeout: seconds open responses get at shutdown before their apps
            are cancelled (and their connections closed); None = all they need.
    """

    def __init__(
        self, app: App, limits: Limits | None = None, *, graceful_timeout: float | None = None
    ) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.replies = Replies(self.limits)
        self.graceful_timeout = graceful_timeout
        self.connections: set[Connection] = set()
        #: Connections without a request in progress, oldest first (dicts keep order).
        self.waiting: dict[Connection, None] = {}
        self.stopping = False
        self.loop = cast("asyncio.AbstractEventLoop", None)
        self._servers: list[asyncio.Server] = []
        self._all_gone: asyncio.Future[None] | None = None

    def make_room(self) -> bool:
        """Close the connection that has waited longest without a request in progress."""
        return shed_oldest(self.waiting)

    def lost(self) -> None:
        if not self.connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    async def startup(self, sockets: list[socket.socket]) -> None:
        """Start accepting on `sockets` (bound and listening already)."""
        self.loop = loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(lambda: Connection(self), sock=sock)
            self._servers.append(server)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, close idle connections, let open responses finish (up to
        `graceful_timeout`), then cancel the apps still running and close the rest."""
        del sockets  # the servers own them
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.shut()
        if self.connections:
            self._all_gone = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_gone), self.graceful_timeout)
        # Cancelled first, closed after: an app may still end its response on the
        # cancellation (an error event for a stream, say); one that ignores it is cut.
        tasks = [c.cycle.task for c in self.connections if c.cycle and c.cycle.task]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CANCEL_WAIT_S)
        for conn in list(self.connections):
            conn.transport.close()
        for server in self._servers:
            await server.wait_closed()
