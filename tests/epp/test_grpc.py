"""The picker's gRPC server (`sluicegate.epp._grpc`) against the HTTP/2 and gRPC protocols.

A raw ``h2`` client drives what grpcio's client never shows: flow-control windows,
RST_STREAM, trailers after a blocked reply, bad framing. grpcio's own client checks
interoperability (status codes as a real gRPC stack reads them).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc
import h2.connection
import h2.events
import h2.settings
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluicegate.epp._grpc import GrpcError, GrpcServer, GrpcStream, Method, Status, frame

from .conftest import eventually, stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

BytesValue = wrappers_pb2.BytesValue
ECHO = "/test.Echo/Echo"
LIMIT = 4096


class Recorder:
    """Handlers for the tests, recording how each call ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.release = asyncio.Event()

    async def echo(self, stream: GrpcStream) -> None:
        """Each request back; ``b"big:N"`` answers N bytes; ``b"hold"`` waits."""
        try:
            while (request := await stream.read()) is not None:
                if request.value.startswith(b"big:"):
                    stream.send(BytesValue(value=b"x" * int(request.value[4:])))
                elif request.value == b"hold":
                    await self.release.wait()
                elif request.value == b"fail":
                    raise GrpcError(Status.NOT_FOUND, "nothing here: 100% sure")
                else:
                    stream.send(request)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("ok")


@contextlib.asynccontextmanager
async def served(recorder: Recorder) -> AsyncIterator[tuple[GrpcServer, int]]:
    server = GrpcServer({ECHO: Method(recorder.echo, BytesValue)}, max_message_bytes=LIMIT)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop(0)


class RawClient:
    """An HTTP/2 client on h2: frames exactly as a test writes them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[Any] = []

    @classmethod
    async def connect(cls, port: int, window: int | None = None) -> RawClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.h2.initiate_connection()
        if window is not None:
            client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        client.flush()
        await client.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
        return client

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def open(self, path: str = ECHO, content_type: bytes = b"application/grpc") -> int:
        sid: int = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"test"), (b"content-type", content_type), (b"te", b"trailers"),
        ]  # fmt: skip
        self.h2.send_headers(sid, headers)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, *, end: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end)
        self.flush()

    async def until(self, done: Callable[[Any], bool]) -> Any:
        """Read events until one satisfies `done`; returns it (all are kept in `events`)."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("the server closed the connection")
            events = self.h2.receive_data(data)
            self.flush()
            self.events += events
            for event in events:
                if done(event):
                    return event

    async def settle(self) -> None:
        """Take in whatever the server sent within a moment (it may be nothing)."""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.reader.read(65536), 0.05)
            self.events += self.h2.receive_data(data)

    def data(self, sid: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid
        )

    async def trailers(self, sid: int) -> dict[bytes, bytes]:
        def ended(e: Any) -> bool:
            return isinstance(e, h2.events.TrailersReceived | h2.events.ResponseReceived) and (
                e.stream_id == sid and e.stream_ended is not None
            )

        event = next((e for e in self.events if ended(e)), None) or await self.until(ended)
        return dict(event.headers)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def message(value: bytes) -> bytes:
    return frame(BytesValue(value=value).SerializeToString())


@pytest.mark.asyncio
async def test_grpcio_client_reads_replies_statuses_and_messages() -> None:
    recorder = Recorder()
    async with served(recorder) as (_, port), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        echo = ch.stream_stream(
            ECHO, request_serializer=BytesValue.SerializeToString,
            response_deserializer=BytesValue.FromString,
        )  # fmt: skip
        call = echo()
        for value in (b"a", b"b"):
            await call.write(BytesValue(value=value))
            assert (await call.read()).value == value
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        call = echo()
        await call.write(BytesValue(value=b"fail"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "nothing here: 100% sure"  # percent-encoded on the wire
        unknown = ch.unary_unary("/test.Echo/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await unknown(b"")
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert recorder.ended == ["ok"]  # the failed call raised instead


@pytest.mark.asyncio
async def test_replies_wait_for_the_peers_window_and_trailers_wait_behind_them() -> None:
    async with served(Recorder()) as (_, port):
        client = await RawClient.connect(port, window=100)
        sid = client.open()
        client.send(sid, message(b"big:1000"), end=True)
        await client.until(lambda e: len(client.data(sid)) >= 100)
        await client.settle()  # every chance to overrun the window: it must not
        assert len(client.data(sid)) == 100
        assert not any(isinstance(e, h2.events.TrailersReceived) for e in client.events)
        client.h2.increment_flow_control_window(1000, sid)
        client.flush()
        trailers = await client.trailers(sid)
        assert trailers[b"grpc-status"] == b"0"
        body = client.data(sid)
        assert BytesValue.FromString(body[5:]).value == b"x" * 1000
        await client.close()


@pytest.mark.asyncio
async def test_rst_stream_cancels_the_handler_and_frees_the_stream() -> None:
    recorder = Recorder()
    async with served(recorder) as (server, port):
        client = await RawClient.connect(port)
        sid = client.open()
        client.send(sid, message(b"ping") + message(b"hold"))
        await client.until(lambda e: isinstance(e, h2.events.DataReceived))
        client.h2.reset_stream(sid, 8)  # CANCEL, as Envoy does when the client left
        client.flush()
        await eventually(lambda: bool(recorder.ended))
        assert recorder.ended == ["cancelled"]
        assert server._open == 0
        # The connection goes on: a new stream on it is served.
        recorder.release.set()
        again = client.open()
        client.send(again, message(b"pong"), end=True)
        assert (await client.trailers(again))[b"grpc-status"] == b"0"
        await client.close()


@pytest.mark.asyncio
async def test_open_streams_finish_after_a_graceful_goaway() -> None:
    recorder = Recorder()
    async with served(recorder) as (server, port):
        client = await RawClient.connect(port)
        sid = client.open()
        client.send(sid, message(b"hold"))
        await eventually(lambda: server._open > 0)
        client.h2.close_connection(last_stream_id=sid)  # GOAWAY NO_ERROR, as Envoy drains
        # h2 (client side too) closes its state on GOAWAY: frames go out by hand from here.
        client.flush()
        recorder.release.set()
        await asyncio.sleep(0.01)
        assert recorder.ended == []  # still open, still being served
        payload = message(b"after")
        raw = len(payload).to_bytes(3, "big") + bytes((0, 1)) + sid.to_bytes(4, "big") + payload
        client.writer.write(raw)  # DATA with END_STREAM
        received = b""
        while chunk := await asyncio.wait_for(client.reader.read(65536), 10):
            received += chunk  # until the server closes the connection
        frames = _frames(received)
        assert (0, sid) in frames  # the echo's DATA
        assert b"after" in b"".join(p for (kind, _), p in frames.items() if kind == 0)
        assert (1, sid) in frames  # the trailers
        assert (7, 0) in frames  # GOAWAY, once the last stream ended
        assert recorder.ended == ["ok"]
        await client.close()


def _frames(data: bytes) -> dict[tuple[int, int], bytes]:
    """(type, stream id) -> payload of the last such frame, from raw HTTP/2 bytes."""
    out: dict[tuple[int, int], bytes] = {}
    while len(data) >= 9:
        size = int.from_bytes(data[:3], "big")
        out[data[3], int.from_bytes(data[5:9], "big")] = data[9 : 9 + size]
        data = data[9 + size :]
    return out


@pytest.mark.asyncio
async def test_a_client_still_sending_after_the_trailers_is_not_reset() -> None:
    # Envoy streams the body without waiting; a rejection ends the call mid-body. A
    # RST_STREAM then would fail the client's next write (grpcio reports INTERNAL).
    async with served(Recorder()) as (_, port):
        client = await RawClient.connect(port)
        sid = client.open()
        client.send(sid, message(b"fail"))
        assert (await client.trailers(sid))[b"grpc-status"] == str(Status.NOT_FOUND).encode()
        client.send(sid, message(b"more"))
        client.send(sid, message(b"last"), end=True)
        again = client.open()
        client.send(again, message(b"next"), end=True)
        assert (await client.trailers(again))[b"grpc-status"] == b"0"
        assert not any(isinstance(e, h2.events.StreamReset) for e in client.events)
        await client.close()


@pytest.mark.asyncio
async def test_messages_split_across_frames_and_sharing_frames_are_parsed() -> None:
    async with served(Recorder()) as (_, port):
        client = await RawClient.connect(port)
        sid = client.open()
        big = message(b"y" * 4000)
        data = message(b"a") + big + message(b"b")
        for at in range(0, len(data), 7):  # headers and payloads cut anywhere
            client.send(sid, data[at : at + 7])
        client.send(sid, b"", end=True)
        assert (await client.trailers(sid))[b"grpc-status"] == b"0"
        assert client.data(sid) == data  # each echoed whole, in order
        await client.close()


@pytest.mark.asyncio
async def test_a_lost_connection_cancels_its_handlers() -> None:
    recorder = Recorder()
    async with served(recorder) as (server, port):
        client = await RawClient.connect(port)
        sid = client.open()
        client.send(sid, message(b"hold"))
        await eventually(lambda: server._open > 0)
        await client.close()
        await eventually(lambda: bool(recorder.ended))
        assert recorder.ended == ["cancelled"]
        assert server._open == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x01" + (3).to_bytes(4, "big") + b"abc", Status.UNIMPLEMENTED),  # compressed
        (b"\x00" + (LIMIT + 1).to_bytes(4, "big"), Status.RESOURCE_EXHAUSTED),  # too large
        (b"\x00" + (3).to_bytes(4, "big") + b"\xff\xff\xff", Status.INTERNAL),  # not protobuf
    ],
)
async def test_bad_framing_ends_the_stream_with_its_status(data: bytes, status: int) -> None:
    recorder = Recorder()
    async with served(recorder) as (server, port):
        client = await RawClient.connect(port)
        sid = client.open()
        client.send(sid, message(b"ping"))  # the handler runs, then the bad message
        await client.until(lambda e: isinstance(e, h2.events.DataReceived))
        client.send(sid, data)
        trailers = await client.trailers(sid)
        assert trailers[b"grpc-status"] == str(status).encode()
        await eventually(lambda: bool(recorder.ended))
        assert recorder.ended == ["cancelled"]
        assert server._open == 0
        await client.close()


@pytest.mark.asyncio
async def test_non_grpc_requests_are_refused() -> None:
    async with served(Recorder()) as (_, port):
        client = await RawClient.connect(port)
        client.open(content_type=b"application/json")
        event = await client.until(lambda e: isinstance(e, h2.events.ResponseReceived))
        assert dict(event.headers)[b":status"] == b"415"
        await client.close()


@pytest.mark.asyncio
async def test_stop_lets_open_streams_end_then_cancels_the_rest() -> None:
    recorder = Recorder()
    server = GrpcServer({ECHO: Method(recorder.echo, BytesValue)}, max_message_bytes=LIMIT)
    port = await server.start("127.0.0.1", 0)
    client = await RawClient.connect(port)
    sid = client.open()
    client.send(sid, message(b"hold"))
    await eventually(lambda: server._open > 0)
    stopping = asyncio.create_task(server.stop(30))
    await asyncio.sleep(0.01)
    assert not stopping.done()  # the open stream holds the stop
    recorder.release.set()
    client.send(sid, b"", end=True)
    assert (await client.trailers(sid))[b"grpc-status"] == b"0"
    await stopping
    assert recorder.ended == ["ok"]
    await client.close()
    # Past the grace, a stream that does not end is cancelled.
    recorder = Recorder()
    server = GrpcServer({ECHO: Method(recorder.echo, BytesValue)}, max_message_bytes=LIMIT)
    port = await server.start("127.0.0.1", 0)
    client = await RawClient.connect(port)
    client.send(client.open(), message(b"hold"))
    await eventually(lambda: server._open > 0)
    await server.stop(0.01)
    await eventually(lambda: bool(recorder.ended))
    assert recorder.ended == ["cancelled"]
    await client.close()


@pytest.mark.asyncio
async def test_picker_health_check_serves_known_services_only() -> None:
    async with (
        stack() as (running, _),
        grpc.aio.insecure_channel(running.grpc_target) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as watch:
            async for _ in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                pass
        assert watch.value.code() == grpc.StatusCode.UNIMPLEMENTED
