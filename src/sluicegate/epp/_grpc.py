"""A small gRPC server on asyncio and ``h2``: the picker's ext_proc stream and health check.

Why not grpcio's server: measured on this project's machine, grpc.aio spends 450-600 µs
of CPU per ext_proc lifecycle (four message pairs) doing nothing, which caps a picker
at about 2,000 lifecycles per core before any decision is made; the same do-nothing
server on an asyncio Protocol and ``h2`` spends about 250 µs (see docs/epp.md,
"Performance"). gRPC over HTTP/2 is small when only the methods served are needed:

* ``h2`` keeps the HTTP/2 state: frames, HPACK, stream states, settings, PING, and the
  flow-control windows in both directions (this module never sends past a window).
* A request is a ``POST`` with ``content-type: application/grpc``; its DATA carries
  messages framed as one flag byte (0: uncompressed) and a 4-byte big-endian length.
  The response is HEADERS (``:status 200``), framed messages, then trailers with
  ``grpc-status`` (and ``grpc-message``) ending the stream. An unknown method gets a
  trailers-only response with ``grpc-status 12``.
* A client's RST_STREAM (Envoy or the client gone) cancels the stream's handler task,
  as does the connection closing; handlers release what they hold in ``finally``.

No compression is announced or accepted, there is no TLS (the picker sits beside Envoy),
and ``stop`` lets open streams end, up to a grace period, before closing connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast, final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["GrpcError", "GrpcServer", "GrpcStream", "Method", "Status"]

_log = logging.getLogger("sluicegate.epp")

Message = Any  # generated protobuf classes carry no static types
_CONFIG: Final = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # Our own headers are constants: validating them per stream is wasted work. Inbound
    # validation (RFC 9113 8.2 field rules) cost ~10 % of the picker's CPU; the peer is
    # Envoy, and only :path, :method and content-type are read (and compared exactly).
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)
_HEADERS: Final = [(b":status", b"200"), (b"content-type", b"application/grpc")]
#: Receive window per stream and for the connection: a buffered-mode body arrives whole.
_WINDOW: Final = 1 << 20
_MAX_STREAMS: Final = 1 << 20  # queued requests hold their streams; grpc-core: unlimited


@final
class Status:
    """The gRPC status codes this server sends."""

    OK: Final = 0
    UNKNOWN: Final = 2
    INVALID_ARGUMENT: Final = 3
    NOT_FOUND: Final = 5
    RESOURCE_EXHAUSTED: Final = 8
    UNIMPLEMENTED: Final = 12
    INTERNAL: Final = 13


@final
class GrpcError(Exception):
    """Raised by a handler (or the framing) to end a stream with a non-OK status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@final
@dataclass(frozen=True, slots=True)
class Method:
    """A served method: its handler and the request message class."""

    handler: Callable[[GrpcStream], Awaitable[None]]
    request: Any


def frame(payload: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@final
class GrpcStream:
    """One call: `read` the requests, `send` replies; the trailers follow the handler."""

    __slots__ = ("_conn", "_inbox", "_unparsed", "_waiter", "ended", "id", "method", "task")

    def __init__(self, conn: _Connection, stream_id: int, method: Method) -> None:
        self._conn = conn
        self.method = method
        self.id = stream_id
        self._inbox: deque[Message] = deque()
        self._unparsed = bytearray()
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> Message | None:
        """The next request message, or None once the client half-closed the stream."""
        while not self._inbox:
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    def send(self, message: Message) -> None:
        """Queue one reply (sent as the peer's flow-control window allows)."""
        self._conn.send(self.id, frame(message.SerializeToString()))

    def send_framed(self, data: bytes) -> None:
        """Queue already framed replies (see `frame`): for replies built once."""
        self._conn.send(self.id, data)

    def feed(self, data: bytes, limit: int) -> None:
        """Parse the messages completed by `data` (raises GrpcError on bad framing)."""
        if self._unparsed:
            # A message spread over frames (a large body): grow one buffer, not copies.
            self._unparsed += data
            data = bytes(self._unparsed) if self._complete(self._unparsed, limit) else b""
            if not data:
                return
        at = 0
        while len(data) - at >= 5:
            size = self._size(data, at, limit)
            if len(data) - at - 5 < size:
                break
            try:
                self._inbox.append(self.method.request.FromString(data[at + 5 : at + 5 + size]))
            except Exception as exc:  # protobuf's DecodeError
                raise GrpcError(Status.INTERNAL, f"cannot parse the request: {exc}") from None
            at += 5 + size
        self._unparsed = bytearray(data[at:]) if at < len(data) else bytearray()
        self._wake()

    @staticmethod
    def _size(buf: bytes | bytearray, at: int, limit: int) -> int:
        """The length of the message framed at `at` (raises GrpcError if refused)."""
        if buf[at] != 0:
            raise GrpcError(Status.UNIMPLEMENTED, "compressed messages are not accepted")
        size = int.from_bytes(buf[at + 1 : at + 5], "big")
        if size > limit:
            raise GrpcError(Status.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds {limit}")
        return size

    def _complete(self, buf: bytearray, limit: int) -> bool:
        """Whether `buf` holds at least its first whole message."""
        return len(buf) >= 5 and len(buf) - 5 >= self._size(buf, 0, limit)

    def end(self) -> None:
        """The client half-closed: `read` returns None once the inbox is empty."""
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@final
class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2's state machine, the streams, the outbound backlog."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._h2 = h2.connection.H2Connection(_CONFIG)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.streams: dict[int, GrpcStream] = {}
        #: Data not yet allowed by the peer's windows, and trailers waiting behind it.
        self._backlog: dict[int, bytearray] = {}
        self._trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        self._flush_soon = False
        #: The peer sent a graceful GOAWAY: close once the open streams have ended.
        self._peer_gone = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they quack alike.
        self._transport = cast("asyncio.Transport", transport)
        self._server.connections.add(self)
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_WINDOW)
        self._transport.write(self._h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 queued the GOAWAY to send
            _log.info("closing an HTTP/2 connection on a protocol error: %s", exc)
            self.close()
            return
        for event in events:
            self._on(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        for stream in list(self.streams.values()):
            self._cancel(stream)

    # -- events -------------------------------------------------------------------------

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._cancel(stream)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._drain_backlog()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The peer sent GOAWAY: no new streams; a graceful one lets open streams finish.

        h2 closes its state machine on any GOAWAY (python-hyper/h2#1181), which would cut
        the requests in flight when Envoy drains a connection. RFC 9113 6.8 lets them
        complete, so after a NO_ERROR GOAWAY the state goes back to open until the last
        stream ends (tests/epp/test_grpc.py checks this against the pinned h2).
        """
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR or not self.streams:
            self.close()
            return
        self._peer_gone = True
        self._h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        headers = dict(event.headers or ())
        method = self._server.methods.get(headers.get(b":path", b""))
        ctype = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not ctype.startswith(b"application/grpc"):
            self._h2.send_headers(sid, [(b":status", b"415")], end_stream=True)
            return
        if method is None:
            path = headers.get(b":path", b"").decode("latin-1")
            self._trailers_only(sid, Status.UNIMPLEMENTED, f"unknown method {path}")
            return
        if self._peer_gone:  # it promised no new streams (RFC 9113 6.8)
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = self.streams[sid] = GrpcStream(self, sid, method)
        self._server.opened()
        self._h2.send_headers(sid, _HEADERS)
        stream.task = self._loop.create_task(self._run(stream))

    def _data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        stream = self.streams.get(sid)
        if stream is None or not event.data:
            return
        try:
            stream.feed(event.data, self._server.max_message_bytes)
        except GrpcError as exc:
            self._cancel(stream)
            self._trailers_only(sid, exc.status, exc.message, headers_sent=True)

    # -- streams ------------------------------------------------------------------------

    async def _run(self, stream: GrpcStream) -> None:
        status, message = Status.OK, ""
        try:
            await stream.method.handler(stream)
        except GrpcError as exc:
            status, message = exc.status, exc.message
        except asyncio.CancelledError:
            self._forget(stream.id)
            raise
        except Exception:
            _log.exception("a gRPC handler failed")
            status, message = Status.UNKNOWN, "the handler failed"
        finally:
            # A cancelled task keeps its CancelledError, whose traceback holds this
            # frame: unlinked, an ended stream is freed by reference counting, not left
            # to the cyclic collector.
            stream.task = None
        if self.streams.get(stream.id) is stream:
            self._finish(stream.id, status, message)

    def _cancel(self, stream: GrpcStream) -> None:
        self._forget(stream.id)
        if stream.task is not None:
            stream.task.cancel()

    def _forget(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self._backlog.pop(sid, None)
            self._trailers.pop(sid, None)
            self._server.closed()
            if self._peer_gone and not self.streams:
                self._loop.call_soon(self.close)  # after this stream's trailers are out

    def _finish(self, sid: int, status: int, message: str) -> None:
        trailers = [(b"grpc-status", str(status).encode())]
        if message:
            trailers.append((b"grpc-message", _percent(message)))
        if sid in self._backlog:
            self._trailers[sid] = trailers  # sent once the backlog is
            return
        self._end_stream(sid, trailers)

    def _end_stream(self, sid: int, trailers: list[tuple[bytes, bytes]]) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            # No RST_STREAM after the trailers, even if the client is still sending (Envoy
            # streams the body without waiting): grpcio's client fails a write that meets
            # one. What still arrives is acknowledged for flow control and dropped.
            self._h2.send_headers(sid, trailers, end_stream=True)
        self._forget(sid)
        self._schedule_flush()

    def _trailers_only(
        self, sid: int, status: int, message: str, *, headers_sent: bool = False
    ) -> None:
        block = [] if headers_sent else list(_HEADERS)
        block += [(b"grpc-status", str(status).encode()), (b"grpc-message", _percent(message))]
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._h2.send_headers(sid, block, end_stream=True)
        self._schedule_flush()

    # -- sending ------------------------------------------------------------------------

    def send(self, sid: int, data: bytes) -> None:
        """Send `data` on stream `sid` within the windows; keep the rest for later."""
        if sid not in self.streams:
            return  # reset or finished meanwhile: nobody reads it
        pending = self._backlog.get(sid)
        if pending is not None:
            pending += data
        else:
            rest = self._push(sid, data)
            if rest:
                self._backlog[sid] = rest
        self._schedule_flush()

    def _push(self, sid: int, data: bytes | bytearray) -> bytearray | None:
        """Send what the windows allow; returns the rest (None when all went)."""
        h2c = self._h2
        room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
        if len(data) <= room:  # the usual case: one small reply
            h2c.send_data(sid, bytes(data))
            return None
        view = memoryview(data)
        at = 0
        while at < len(view):
            room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if room <= 0:
                return bytearray(view[at:])
            h2c.send_data(sid, bytes(view[at : at + room]))
            at += room
        return None

    def _drain_backlog(self) -> None:
        for sid in list(self._backlog):
            rest = self._push(sid, self._backlog[sid])
            if rest:
                self._backlog[sid] = rest
                continue
            del self._backlog[sid]
            trailers = self._trailers.pop(sid, None)
            if trailers is not None:
                self._end_stream(sid, trailers)

    def _schedule_flush(self) -> None:
        # One write per loop turn for everything the handlers sent in it.
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        """GOAWAY, then close; open streams' handlers are cancelled. Idempotent."""
        transport, self._transport = self._transport, None
        for stream in list(self.streams.values()):
            self._cancel(stream)
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection()
        transport.write(self._h2.data_to_send())
        transport.close()


def _percent(message: str) -> bytes:
    """``grpc-message`` is percent-encoded UTF-8 (the gRPC-over-HTTP/2 spec)."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        out += bytes([byte]) if 0x20 <= byte < 0x7F and byte != 0x25 else b"%%%02X" % byte
    return bytes(out)


@final
class GrpcServer:
    """Serves `methods` (``/package.Service/Method`` -> `Method`) on one port.

    Args:
        methods: the served methods, by HTTP/2 path.
        max_message_bytes: larger request messages end their stream with
            RESOURCE_EXHAUSTED (grpcio's ``max_receive_message_length``).
    """

    def __init__(self, methods: Mapping[str, Method], *, max_message_bytes: int) -> None:
        self.methods = {path.encode(): method for path, method in methods.items()}
        self.max_message_bytes = max_message_bytes
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._open = 0
        self._idle: asyncio.Future[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (`port` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def opened(self) -> None:
        self._open += 1

    def closed(self) -> None:
        self._open -= 1
        if self._open == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def stop(self, grace: float) -> None:
        """Stop accepting connections; let open streams end (up to `grace` s); close."""
        if self._server is not None:
            self._server.close()
        if self._open:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), grace)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
