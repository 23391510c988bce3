"""A lean ext_proc load generator: Envoy's message sequence from pre-encoded HTTP/2 bytes.

The `EnvoyEmulator` (grpcio's client) costs its core about as much per lifecycle as the
picker costs its own, so it cannot keep the picker's core busy: the picker then runs at
40-60 % and pays a loop wake-up per message, which understates what a busy core does.
This client writes the same ext_proc messages in the same three round trips as Envoy
in full-duplex mode, but from bytes encoded once, and reads replies by counting gRPC
messages in DATA frames, so one load core drives a picker core to saturation.

Round trips per lifecycle (one HTTP/2 stream): request headers + request body (the
pick and the body given back: 2 replies); response headers (1 reply); response body
with END_STREAM (1 reply, then the trailers). A stream that ends early (an immediate
response) or is reset counts as an error. Only for benchmarks: it checks counts, not
contents (the emulator and tests/epp check contents).
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Final, cast, final

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from hpack import Encoder, NeverIndexedHeaderTuple

from sluicegate.epp._emulator import _MODES, _http_headers
from sluicegate.epp._grpc import frame

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["RESPONSE", "LeanEnvoy"]

#: The upstream's answer in the response phase: a short JSON body with ``usage``.
RESPONSE: Final = (b'{"id":"x","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4}}',)

_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_WINDOW: Final = (1 << 31) - 1
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY = 0, 1, 3, 4, 6, 7
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_PATH: Final = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + sid.to_bytes(4, "big")
        + payload
    )


def _messages(body: bytes, response: Iterable[bytes]) -> tuple[bytes, bytes, bytes]:
    """The gRPC-framed requests of the three round trips."""
    mode = _MODES["full-duplex"]
    headers = ext.ProcessingRequest(
        request_headers=_http_headers({":method": "POST", ":path": "/v1/chat/completions"}, False),
        protocol_config=ext.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode),
    )
    first = [
        headers,
        ext.ProcessingRequest(request_body=ext.HttpBody(body=body, end_of_stream=True)),
    ]
    second = ext.ProcessingRequest(response_headers=_http_headers({":status": "200"}, False))
    third = ext.ProcessingRequest(
        response_body=ext.HttpBody(body=b"".join(response), end_of_stream=True)
    )
    return (
        b"".join(frame(m.SerializeToString()) for m in first),
        frame(second.SerializeToString()),
        frame(third.SerializeToString()),
    )


@final
class _Stream:
    __slots__ = ("buffer", "ended", "messages", "target", "waiter")

    def __init__(self, waiter: asyncio.Future[bool]) -> None:
        self.buffer = b""
        self.messages = 0
        #: Replies expected by the end of the current round trip: 2, then 3, then 4.
        self.target = 2
        self.ended = False
        self.waiter = waiter


@final
class LeanEnvoy(asyncio.Protocol):
    """One HTTP/2 connection to a picker; `lifecycle` plays one request (see module doc)."""

    def __init__(self, body: bytes, response: Iterable[bytes] = (b'{"usage":{}}',)) -> None:
        encoder = Encoder()
        pairs = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", _PATH),
            (b":authority", b"epp"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        ]  # fmt: skip
        # Never-indexed literals leave the server's HPACK table alone: one block fits all.
        self._block = encoder.encode([NeverIndexedHeaderTuple(k, v) for k, v in pairs])
        self._requests = _messages(body, response)
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._streams: dict[int, _Stream] = {}
        self._next = 1
        self.errors = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls, host: str, port: int, body: bytes, response: Iterable[bytes]
    ) -> LeanEnvoy:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(body, response), host, port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        settings = struct.pack(">HI", 0x4, _MAX_WINDOW)  # INITIAL_WINDOW_SIZE
        update = _frame(8, 0, 0, (_MAX_WINDOW - 65535).to_bytes(4, "big"))
        self._transport.write(_PREFACE + _frame(_SETTINGS, 0, 0, settings) + update)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        for stream in self._streams.values():
            if not stream.waiter.done():
                stream.waiter.set_result(False)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def lifecycle(self) -> bool:
        """One request's three round trips; False if the stream ended otherwise."""
        assert self._transport is not None
        sid, self._next = self._next, self._next + 2
        loop = asyncio.get_running_loop()
        stream = self._streams[sid] = _Stream(loop.create_future())
        first, second, third = self._requests
        try:
            write = self._transport.write
            write(_frame(_HEADERS, _END_HEADERS, sid, self._block) + _frame(_DATA, 0, sid, first))
            for data, flags, target in ((second, 0, 3), (third, _END_STREAM, 4)):
                if not await stream.waiter:
                    return self._failed()
                stream.waiter, stream.target = loop.create_future(), target
                write(_frame(_DATA, flags, sid, data))
            return await stream.waiter or self._failed()
        finally:
            del self._streams[sid]

    def _failed(self) -> bool:
        self.errors += 1
        return False

    def data_received(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        at = 0
        while len(buf) - at >= 9:
            size = int.from_bytes(buf[at : at + 3], "big")
            if len(buf) - at - 9 < size:
                break
            kind, flags = buf[at + 3], buf[at + 4]
            sid = int.from_bytes(buf[at + 5 : at + 9], "big") & 0x7FFFFFFF
            self._frame(kind, flags, sid, buf[at + 9 : at + 9 + size])
            at += 9 + size
        self._buffer = buf[at:]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == _DATA:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            self._data(sid, payload)
        elif (kind == _HEADERS and flags & _END_STREAM) or kind == _RST:
            stream = self._streams.get(sid)
            if stream is not None:
                stream.ended = True
                self._check(stream)
        elif kind == _SETTINGS and not flags & _ACK:
            assert self._transport is not None
            self._transport.write(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING and not flags & _ACK:
            assert self._transport is not None
            self._transport.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY:
            self.close()

    def _data(self, sid: int, payload: bytes) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        buf = stream.buffer + payload
        while len(buf) >= 5 and len(buf) - 5 >= int.from_bytes(buf[1:5], "big"):
            buf = buf[5 + int.from_bytes(buf[1:5], "big") :]
            stream.messages += 1
        stream.buffer = buf
        self._check(stream)

    def _check(self, stream: _Stream) -> None:
        """Resolve the round trip: its replies came (the last one: and the trailers)."""
        waiter = stream.waiter
        if waiter.done():
            return
        if stream.ended:
            waiter.set_result(stream.target == 4 and stream.messages >= 4)
        elif stream.target < 4 and stream.messages >= stream.target:
            waiter.set_result(True)
