"""The data path's HTTP/1.1 client (`gateway/_http1.py`, `gateway/_client.py`) against
raw asyncio servers on 127.0.0.1: framing, limits against hostile backends, pooling,
timeouts, cancellation, the stream pump, and the failure kinds the gateway's passive
health reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sluicegate.gateway import _client, _http1
from sluicegate.gateway._client import Client
from sluicegate.gateway._health import failure_kind
from sluicegate.gateway._http1 import (
    ConnectError,
    ConnectionBroken,
    ConnectTimeout,
    ProtocolError,
    ReadTimeout,
    Response,
    Target,
)
from sluicegate.gateway._upstream import (
    KIND_BROKEN,
    KIND_CONNECT,
    KIND_TIMEOUT,
    UPSTREAM_ERRORS,
    UpstreamFailure,
    failure,
)

from .conftest import eventually, free_port

WAIT = 10.0
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A backend speaking raw bytes: `handler` runs once per request on a connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    srv = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        srv.close()


def reply(data: bytes) -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return handler


def reply_when(release: asyncio.Event) -> Handler:
    """Answer OK once `release` is set (the connection stays busy until then)."""

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(OK)
        await writer.drain()

    return handler


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def fetch(client: Client, url: str, path: bytes = b"/v1/x") -> tuple[Response, bytes]:
    resp = await asyncio.wait_for(client.request("POST", Target(url, path), data=b"{}"), WAIT)
    body = await asyncio.wait_for(resp.read(), WAIT)
    resp.release()
    return resp, body


@pytest.mark.asyncio
async def test_content_length_answers_reuse_one_keep_alive_connection() -> None:
    async with serving(reply(OK)) as server:
        client = Client()
        for _ in range(3):
            resp, body = await fetch(client, server.url)
            assert (resp.status, body, resp.content_length) == (200, b"{}", 2)
            assert resp.content_type == "application/json"
        await client.close()
    assert server.connections == 1
    head = server.heads[0]
    assert head.startswith(b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"content-length: 2\r\n" in head


@pytest.mark.asyncio
async def test_a_base_url_path_prefixes_the_target() -> None:
    async with serving(reply(OK)) as server:
        client = Client()
        await fetch(client, server.url + "/prefix")
        await client.close()
    assert server.heads[0].startswith(b"POST /prefix/v1/x HTTP/1.1\r\n")


async def one_part_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked SSE answer that sends one event and nothing more until the client leaves."""
    writer.write(CHUNKED + chunk(b"data: 1\n\n"))
    await writer.drain()
    await reader.read()


def two_parts(release: asyncio.Event) -> Handler:
    """A chunked SSE answer: one event, then, once `release` is set, one more and the end."""

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        await release.wait()
        writer.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()

    return handler


@pytest.mark.asyncio
async def test_a_chunked_body_is_handed_out_as_it_arrives() -> None:
    release = asyncio.Event()

    async with serving(two_parts(release)) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"), data=b"{}")
        assert resp.content_type == "text/event-stream" and resp.content_length is None
        assert await asyncio.wait_for(resp.readany(), WAIT) == b"data: 1\n\n"
        release.set()
        assert await asyncio.wait_for(resp.read(), WAIT) == b"data: 2\n\n"
        resp.release()
        await fetch(client, server.url)  # the same connection, after a chunked answer
        await client.close()
    assert server.connections == 1


@pytest.mark.asyncio
async def test_a_body_delimited_by_the_close_ends_at_the_close() -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        writer.close()

    async with serving(handler) as server:
        client = Client()
        _, body = await fetch(client, server.url)
        assert body == b"part one, part two"
        _, body = await fetch(client, server.url)  # a new connection: that one closed
        await client.close()
    assert server.connections == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    ],
)
async def test_connection_close_and_http_1_0_are_not_reused(answer: bytes) -> None:
    async with serving(reply(answer)) as server:
        client = Client()
        for _ in range(2):
            _, body = await fetch(client, server.url)
            assert body == b"{}"
        await client.close()
    assert server.connections == 2


@pytest.mark.asyncio
async def test_informational_answers_are_skipped() -> None:
    async with serving(reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as server:
        client = Client()
        resp, body = await fetch(client, server.url)
        assert (resp.status, body) == (200, b"{}")
        await client.close()


@pytest.mark.asyncio
async def test_read_of_a_few_bytes_keeps_the_rest() -> None:
    answer = b"HTTP/1.1 500 Oops\r\ncontent-length: 10\r\n\r\n0123456789"
    async with serving(reply(answer)) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"))
        assert resp.status == 500
        assert await resp.read(3) == b"012"
        assert await resp.read() == b"3456789"
        resp.release()
        await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 abc OK\r\n\r\n", "invalid HTTP"),
        (b"NOTHTTP\r\n\r\n", "invalid HTTP"),
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * 9000 + b"\r\ncontent-length: 0\r\n\r\n", "header"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 200 + b"content-length: 0\r\n\r\n",
            "headers",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"x-%d: y\r\n" * 0 + b"y: " + b"b" * 70_000, "head"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}", "invalid"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n{}", "invalid"),
        (b"HTTP/1.1 101 Switching\r\nupgrade: h2c\r\n\r\n", "switched"),
    ],
)
async def test_a_hostile_head_is_a_protocol_error(answer: bytes, why: str) -> None:
    async with serving(reply(answer)) as server:
        client = Client()
        with pytest.raises(ProtocolError, match=why):
            await asyncio.wait_for(client.request("POST", Target(server.url, b"/")), WAIT)
        await eventually(lambda: server.closed == 1)  # the connection was closed
        await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "rest",
    [
        b"zz-not-a-size\r\nxx\r\n",
        b"ffffffffffffffffff\r\n",  # a size past 64 bits
        b"3\r\nabcdef\r\n",  # more bytes than the size said
    ],
)
async def test_bad_chunk_framing_fails_after_the_good_chunks(rest: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(rest)
        await writer.drain()
        await reader.read()

    async with serving(handler) as server:
        client = Client(read_timeout=WAIT)
        resp = await client.request("POST", Target(server.url, b"/"))
        assert await resp.readany() == b"data: 1\n\n"
        with pytest.raises(ProtocolError):
            await asyncio.wait_for(resp.read(), WAIT)
        resp.close()
        await client.close()


@pytest.mark.asyncio
async def test_a_second_answer_to_one_request_is_not_taken_for_the_next() -> None:
    async with serving(reply(OK + OK.replace(b"{}", b"[]"))) as server:
        client = Client()
        _, body = await fetch(client, server.url)
        assert body == b"{}"
        _, body = await fetch(client, server.url)
        assert body == b"{}"  # a new connection answered, not the stray "[]"
        await client.close()
    assert server.connections == 2


@pytest.mark.asyncio
async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # nobody asked
        await writer.drain()

    async with serving(handler) as server:
        client = Client()
        await fetch(client, server.url)
        await eventually(lambda: server.closed == 1)
        await fetch(client, server.url)
        await client.close()
    assert server.connections == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234",  # short
        CHUNKED + chunk(b"data: 1\n\n"),  # no last chunk
    ],
)
async def test_a_close_before_the_end_of_the_body_is_broken(answer: bytes) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with serving(handler) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"))
        with pytest.raises(ConnectionBroken, match="before the end"):
            await asyncio.wait_for(resp.read(), WAIT)
        resp.close()
        await client.close()


@pytest.mark.asyncio
async def test_a_close_before_the_head_is_broken() -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving(handler) as server:
        client = Client()
        with pytest.raises(ConnectionBroken):
            await asyncio.wait_for(client.request("POST", Target(server.url, b"/")), WAIT)
        await client.close()


@pytest.mark.asyncio
async def test_a_refused_connect_is_a_connect_error() -> None:
    client = Client()
    with pytest.raises(ConnectError):
        await client.request("POST", Target(f"http://127.0.0.1:{free_port()}", b"/"))
    await client.close()


@pytest.mark.asyncio
async def test_no_head_within_read_timeout_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client closes

    async with serving(handler) as server:
        client = Client(read_timeout=0.1)
        with pytest.raises(ReadTimeout):
            await asyncio.wait_for(client.request("POST", Target(server.url, b"/")), WAIT)
        await eventually(lambda: server.closed == 1)
        await client.close()


@pytest.mark.asyncio
async def test_a_body_that_falls_silent_is_a_read_timeout() -> None:
    async with serving(one_part_then_silence) as server:
        client = Client(read_timeout=0.1)
        resp = await client.request("POST", Target(server.url, b"/"))
        assert await resp.readany() == b"data: 1\n\n"
        with pytest.raises(ReadTimeout):
            await asyncio.wait_for(resp.readany(), WAIT)
        resp.close()
        await client.close()


@pytest.mark.asyncio
async def test_the_connection_bound_makes_requests_wait_then_times_them_out() -> None:
    release = asyncio.Event()
    async with serving(reply_when(release)) as server:
        client = Client(max_connections=1, connect_timeout=0.1)
        first = asyncio.ensure_future(client.request("POST", Target(server.url, b"/")))
        await eventually(lambda: server.connections == 1)
        with pytest.raises(ConnectTimeout):  # no free connection in time
            await client.request("POST", Target(server.url, b"/"))
        client._pool(server.url).connect_timeout = None  # wait as long as it takes now
        second = asyncio.ensure_future(fetch(client, server.url))
        await asyncio.sleep(0)
        release.set()
        resp = await asyncio.wait_for(first, WAIT)
        assert await resp.read() == b"{}"
        resp.release()  # the waiting request takes this connection
        _, body = await asyncio.wait_for(second, WAIT)
        assert body == b"{}"
        await client.close()
    assert server.connections == 1


@pytest.mark.asyncio
async def test_a_waiter_cancelled_as_a_connection_frees_up_raises_its_cancellation() -> None:
    """A waiter cancelled (its connect timeout, say) just before a connection comes free
    is skipped by the hand-over; its own cleanup then finds it gone from the queue. It
    must still see its cancellation (it raised ValueError), and the next waiter the
    connection."""
    async with serving(reply(OK)) as server:
        client = Client(max_connections=1)
        first = await client.request("POST", Target(server.url, b"/"), data=b"{}")
        body = await first.read()
        target = Target(server.url, b"/")
        cancelled = asyncio.ensure_future(client.request("POST", target, data=b"{}"))
        served = asyncio.ensure_future(client.request("POST", target, data=b"{}"))
        await asyncio.sleep(0)  # both wait for the one connection
        cancelled.cancel()  # its waiter is cancelled now; the task resumes later
        first.release()  # the hand-over skips the cancelled waiter
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        second = await asyncio.wait_for(served, WAIT)
        assert (body, await second.read()) == (b"{}", b"{}")
        second.release()
        await client.close()


@pytest.mark.asyncio
async def test_a_crowd_of_waiters_timing_out_leaves_the_queue_compact() -> None:
    """Waiters that give up are dropped from the queue in bulk, not one by one."""
    release = asyncio.Event()
    async with serving(reply_when(release)) as server:
        client = Client(max_connections=1, connect_timeout=0.05)
        first = asyncio.ensure_future(client.request("POST", Target(server.url, b"/")))
        await eventually(lambda: server.connections == 1)
        crowd = [
            asyncio.ensure_future(client.request("POST", Target(server.url, b"/")))
            for _ in range(200)
        ]
        results = await asyncio.gather(*crowd, return_exceptions=True)
        assert all(isinstance(r, ConnectTimeout) for r in results)
        assert len(client._pool(server.url)._waiters) <= 100
        release.set()
        resp = await asyncio.wait_for(first, WAIT)
        assert await resp.read() == b"{}"
        resp.release()
        _, body = await fetch(client, server.url)  # the pool still hands connections out
        assert body == b"{}"
        await client.close()


@pytest.mark.asyncio
async def test_a_cancelled_read_closes_the_connection() -> None:
    """Cancelling the reader (client gone, pause, eviction) closes the connection: the
    backend sees the close at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # until the client closes

    async with serving(handler) as server:
        client = Client()

        async def relay() -> None:
            resp = await client.request("POST", Target(server.url, b"/"))
            try:
                while await resp.readany():
                    pass
            finally:
                resp.close()

        task = asyncio.ensure_future(relay())
        await eventually(lambda: server.connections == 1)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: server.closed == 1)
        await client.close()


@pytest.mark.asyncio
async def test_a_cancelled_request_closes_its_connection_and_frees_the_slot() -> None:
    async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client closes

    async with serving(handler) as server:
        client = Client(max_connections=1)
        task = asyncio.ensure_future(client.request("POST", Target(server.url, b"/")))
        await eventually(lambda: server.connections == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: server.closed == 1)
        server.handler = reply(OK)
        _, body = await fetch(client, server.url)  # the bound's one slot is free again
        assert body == b"{}"
        await client.close()


@pytest.mark.asyncio
async def test_an_unread_body_stops_the_reading_until_it_is_read() -> None:
    size = 4 * _http1.HIGH_WATER

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size)
        await writer.drain()

    async with serving(handler) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"))
        conn = resp._conn
        await eventually(lambda: conn._buffered > _http1.HIGH_WATER)
        assert conn._paused
        assert len(await asyncio.wait_for(resp.read(), WAIT)) == size
        resp.release()
        await client.close()


@pytest.mark.asyncio
async def test_idle_connections_are_closed_after_the_keep_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_client, "KEEPALIVE", 0.05)
    async with serving(reply(OK)) as server:
        client = Client()
        await fetch(client, server.url)
        await eventually(lambda: server.closed == 1)
        await fetch(client, server.url)
        await client.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("raised", "kind", "health"),
    [
        (ConnectError("refused"), KIND_CONNECT, "connect"),
        (ConnectTimeout("slow"), KIND_TIMEOUT, None),
        (ReadTimeout("silent"), KIND_TIMEOUT, None),
        (ConnectionBroken("reset"), KIND_BROKEN, "reset"),
        (ProtocolError("bad chunk"), KIND_BROKEN, "reset"),
    ],
)
def test_failures_map_to_their_kind_and_health(
    raised: BaseException, kind: str, health: str | None
) -> None:
    """As the relay sees them: UPSTREAM_ERRORS gives the kind; the 502 (or 504) the
    relay raises while handling it tells passive health what it means."""
    with pytest.raises(UpstreamFailure) as info, UPSTREAM_ERRORS:
        raise raised
    assert info.value.kind == kind and info.value.cause is raised
    answered = failure(kind, None)
    answered.__context__ = info.value  # raised while handling it, as the relay does
    assert failure_kind(answered) == health


class Sink:
    """A `Response.pump` target: keeps the parts; full (asks for a drain) while
    `full` is set, and its drain waits for `drained`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.counted: list[bytes] = []
        self.full = False
        self.drains = 0
        self.drained = asyncio.Event()

    def write(self, data: bytes) -> bool:
        self.parts.append(data)
        return self.full

    async def drain(self) -> None:
        self.drains += 1
        await self.drained.wait()
        self.full = False


@pytest.mark.asyncio
async def test_pump_hands_out_each_part_as_it_arrives_and_returns_the_last() -> None:
    release = asyncio.Event()

    async with serving(two_parts(release)) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"), data=b"{}")
        sink = Sink()
        pump = asyncio.ensure_future(resp.pump(sink.write, sink.drain, sink.counted.append))
        await eventually(lambda: sink.parts == [b"data: 1\n\n"])
        assert not pump.done()
        release.set()
        # The last part (it came with the end of the body) is returned, not written.
        assert await asyncio.wait_for(pump, WAIT) == b"data: 2\n\n"
        assert sink.parts == [b"data: 1\n\n"]
        assert sink.counted == [b"data: 1\n\n", b"data: 2\n\n"]
        resp.release()
        await fetch(client, server.url)  # the connection went back to the pool
        await client.close()
    assert server.connections == 1


@pytest.mark.asyncio
async def test_pump_stops_reading_while_its_sink_is_full() -> None:
    """A full sink (a slow client) stops the reading until its drain returns; nothing
    is lost nor reordered, and the bytes held stay bounded."""
    parts = [b"%05d" % i * 1000 for i in range(400)]  # 2 MB in 5 kB parts

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED)
        for part in parts:
            writer.write(chunk(part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(handler) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"), data=b"{}")
        conn = resp._conn
        sink = Sink()
        sink.full = True
        pump = asyncio.ensure_future(resp.pump(sink.write, sink.drain))
        await eventually(lambda: sink.drains == 1)
        await asyncio.sleep(0.05)  # the backend would send it all now, if read
        assert conn._paused
        # What unread bytes may ever be held: the high-water mark, plus one read.
        assert conn._buffered <= _http1.HIGH_WATER + 256 * 1024
        sink.drained.set()
        last = await asyncio.wait_for(pump, WAIT)
        assert b"".join(sink.parts) + last == b"".join(parts)
        resp.release()
        await client.close()


@pytest.mark.asyncio
async def test_pump_times_out_only_after_read_timeout_of_silence() -> None:
    """Parts that keep coming keep the stream alive past read_timeout; silence ends
    it with a `ReadTimeout`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED)
        for _ in range(8):  # 0.4 s of parts, every 0.05 s
            writer.write(chunk(b"data: x\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
        await reader.read()  # then silence

    async with serving(handler) as server:
        client = Client(read_timeout=0.2)
        resp = await client.request("POST", Target(server.url, b"/"))
        sink = Sink()
        with pytest.raises(ReadTimeout):
            await asyncio.wait_for(resp.pump(sink.write, sink.drain), WAIT)
        assert len(sink.parts) == 8
        resp.close()
        await client.close()


@pytest.mark.asyncio
async def test_an_exception_in_the_sink_is_raised_by_the_pump() -> None:
    def count(_: bytes) -> None:
        raise ValueError("the meter broke")

    async with serving(one_part_then_silence) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"))
        sink = Sink()
        with pytest.raises(ValueError, match="the meter broke"):
            await asyncio.wait_for(resp.pump(sink.write, sink.drain, count), WAIT)
        resp.close()
        await eventually(lambda: server.closed == 1)
        await client.close()


@pytest.mark.asyncio
async def test_a_cancelled_pump_closes_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # until the client closes

    async with serving(handler) as server:
        client = Client()
        resp = await client.request("POST", Target(server.url, b"/"))
        sink = Sink()

        async def relay() -> None:
            try:
                await resp.pump(sink.write, sink.drain)
            finally:
                resp.close()

        task = asyncio.ensure_future(relay())
        await eventually(lambda: sink.parts == [b"data: 1\n\n"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: server.closed == 1)
        assert resp._conn._write is None
        await client.close()
