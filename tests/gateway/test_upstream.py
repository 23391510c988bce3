"""Broken backends: malformed streams, silence, huge answers; failures counted, never
answered with a backend's address; request bodies held within a memory budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from sluicegate.gateway import serve_in_background

from .conftest import FakeUpstream, eventually, free_port, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

CHAT = "/v1/chat/completions"
PREFIX = "inference_extension_flow_control_"
WAIT = 10.0
EVENT = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chat(stream: bool = False) -> bytes:
    return orjson.dumps({"model": "m", "messages": [], "stream": stream})


@contextlib.asynccontextmanager
async def raw_upstream(script: Script) -> AsyncIterator[str]:
    """A backend speaking raw HTTP/1.1 bytes: `script` answers each connection."""

    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()


@contextlib.asynccontextmanager
async def gateway(url: str, **server: Any) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession]]:
    cfg = make_config([url], server={"host": "127.0.0.1", "port": 0, **server})
    async with (
        serve_in_background(cfg) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        yield gw, client


async def upstream_errors(client: aiohttp.ClientSession) -> dict[str, float]:
    """upstream_errors_total by kind, from /metrics."""
    async with client.get("/metrics") as r:
        text = await r.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{PREFIX}upstream_errors_total{{"):
            kind = line.split('kind="')[1].split('"')[0]
            found[kind] = found.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def in_flight(gw: Gateway) -> int:
    return gw.pools["default"].controller.statistics().in_flight


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


@pytest.mark.asyncio
async def test_malformed_chunk_mid_stream_ends_the_stream_and_frees_the_slot() -> None:
    """An invalid chunk-size line mid-stream: the client gets its events, then an error
    event, and the in-flight slot is released; it does not hang."""
    done = asyncio.Event()

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz-not-a-size\r\nxx\r\n")
        await done.wait()

    async with raw_upstream(script) as url, gateway(url, read_timeout=0.3) as (gw, client):
        async with client.post(CHAT, data=chat(stream=True)) as r:
            assert r.status == 200
            body = await asyncio.wait_for(r.read(), WAIT)
        done.set()
        events = [e for e in body.split(b"\n\n") if e]
        assert events[0] + b"\n\n" == EVENT
        error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
        assert error["code"] in ("upstream_timeout", "bad_gateway")
        assert "127.0.0.1" not in error["message"]
        await eventually(lambda: in_flight(gw) == 0)
        assert sum((await upstream_errors(client)).values()) == 1


@pytest.mark.asyncio
async def test_silent_backend_is_a_timeout_not_unreachable() -> None:
    """No answer within read_timeout: 504 upstream_timeout, counted as kind=timeout."""
    done = asyncio.Event()

    async def script(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await done.wait()

    async with raw_upstream(script) as url, gateway(url, read_timeout=0.2) as (gw, client):
        async with client.post(CHAT, data=chat()) as r:
            assert r.status == 504
            error = (await r.json())["error"]
        done.set()
        assert error["code"] == "upstream_timeout"
        assert url.removeprefix("http://") not in error["message"]
        assert await upstream_errors(client) == {"timeout": 1.0}
        assert in_flight(gw) == 0


@pytest.mark.asyncio
async def test_connect_error_names_no_backend_and_is_counted() -> None:
    """A refused connection: 502 upstream_unreachable without the address; kind=connect."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with gateway(dead) as (_, client):
        async with client.post(CHAT, data=chat()) as r:
            assert r.status == 502
            error = (await r.json())["error"]
        assert error["code"] == "upstream_unreachable"
        assert "127.0.0.1" not in error["message"]
        assert await upstream_errors(client) == {"connect": 1.0}


@pytest.mark.asyncio
async def test_5xx_is_counted_by_backend_and_kind() -> None:
    """A 5xx answer is a 502 for the client and kind=status_5xx for that backend."""
    fake = FakeUpstream()
    fake.mode = "500"
    async with serve_app(fake) as url, gateway(url) as (_, client):
        for _ in range(2):
            async with client.post(CHAT, data=chat()) as r:
                assert r.status == 502
        async with client.get("/metrics") as r:
            text = await r.text()
    line = f'{PREFIX}upstream_errors_total{{backend="{url}",kind="status_5xx",pool="default"}} 2.0'
    assert line in text


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_answer_is_relayed_as_it_arrives(framing: str) -> None:
    """A non-streamed answer over max_buffered_response_bytes is not held whole: its
    start reaches the client while the backend still holds the rest back."""
    size = 200_000
    first = b'{"data": "' + b"a" * 50_000
    rest = b"b" * (size - len(first) - 2) + b'"}'
    release = asyncio.Event()

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        if framing == "chunked":
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(first), first))
            await writer.drain()
            await release.wait()
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        else:
            writer.write(head + b"content-length: %d\r\n\r\n" % size + first)
            await writer.drain()
            await release.wait()
            writer.write(rest)
        await writer.drain()

    async with (
        raw_upstream(script) as url,
        gateway(url, max_buffered_response_bytes=10_000) as (gw, client),
    ):
        async with client.post(CHAT, data=chat()) as r:
            assert r.status == 200
            start = await asyncio.wait_for(r.content.readexactly(10_000), WAIT)
            release.set()
            body = start + await asyncio.wait_for(r.read(), WAIT)
        assert body == first + rest
        if framing == "content-length":
            assert r.headers["content-length"] == str(size)
        await eventually(lambda: in_flight(gw) == 0)


@pytest.mark.asyncio
async def test_small_answer_is_still_sent_with_a_content_length() -> None:
    """Under the cap, answers are buffered and sent with their length as before."""
    fake = FakeUpstream()
    async with (
        serve_app(fake) as url,
        gateway(url, max_buffered_response_bytes=10_000) as (_, client),
        client.post(CHAT, data=chat()) as r,
    ):
        assert r.status == 200
        assert int(r.headers["content-length"]) == len(await r.read())


@pytest.mark.asyncio
async def test_request_bodies_beyond_the_memory_budget_get_503() -> None:
    """Bodies held at once are capped: one more than fits is 503, never queued; the
    budget is returned when a request ends."""
    fake = FakeUpstream()
    fake.hold = asyncio.Event()
    body = orjson.dumps({"model": "m", "messages": [], "pad": "x" * 800})
    server = {"max_body_bytes": 1000, "body_memory_budget": 1500}
    async with serve_app(fake) as url, gateway(url, **server) as (gw, client):
        first = asyncio.ensure_future(client.post(CHAT, data=body))
        await eventually(lambda: len(fake.requests) == 1)
        async with client.post(CHAT, data=body) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "body_budget_exceeded"
        fake.hold.set()
        async with await first as r:
            assert r.status == 200
        async with client.post(CHAT, data=body) as r:
            assert r.status == 200
        assert len(fake.requests) == 2
        assert gw.pools["default"].controller.statistics().submitted == 2


@pytest.mark.asyncio
async def test_stream_cut_at_drain_grace_logs_one_line_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When drain_grace ends a stream, the client gets an error event and the log one
    line from the gateway; uvicorn logs no traceback."""
    fake = FakeUpstream()
    fake.chunks = 1_000_000
    fake.chunk_delay = 0.05
    caplog.set_level(logging.INFO)
    async with serve_app(fake) as url:
        cfg = make_config([url], server={"host": "127.0.0.1", "port": 0, "drain_grace": 1})
        async with aiohttp.ClientSession() as client:
            ctx = serve_in_background(cfg)
            gw = await ctx.__aenter__()
            r = await client.post(f"{gw.url}{CHAT}", data=chat(stream=True))
            assert (await r.content.readline()).startswith(b"data: ")
            await ctx.__aexit__(None, None, None)
            body = await asyncio.wait_for(r.read(), WAIT)
            r.release()
    error = orjson.loads(body.strip().split(b"\n\n")[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "shutting_down"
    assert not [rec for rec in caplog.records if rec.exc_info]
    cut = [rec for rec in caplog.records if "drain_grace" in rec.getMessage()]
    assert len(cut) == 1


def _dechunk(data: bytes) -> bytes:
    """A chunked body's content (the gateway frames parts as they come)."""
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        at = end + 4 + size


@pytest.mark.asyncio
async def test_a_client_that_stops_reading_holds_the_backend_back_and_loses_nothing() -> None:
    """Backpressure through the relay: while the client reads nothing, the backend
    cannot send the whole stream (the gateway stops reading it: no unbounded buffer);
    once the client reads, every byte arrives, in order."""
    part = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"
    total = 1024  # 64 MiB: more than every socket buffer on the way can hold
    sent = 0

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer.write(SSE_HEAD)
        for _i in range(total):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            sent += 1
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(script) as url, gateway(url) as (gw, _):
        assert gw.url is not None
        address = urlsplit(gw.url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        body = chat(stream=True)
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (CHAT.encode(), len(body), body)
        )
        await eventually(lambda: sent > 0)
        await asyncio.sleep(0.5)  # the client reads nothing
        held_back = sent

        async def read_all() -> bytes:
            data = bytearray()
            while not data.endswith(b"\r\n0\r\n\r\n"):
                data += await reader.read(1 << 20)
            return bytes(data)

        received = await asyncio.wait_for(read_all(), WAIT * 3)
        writer.close()
        assert held_back < total // 2
        assert sent == total
        assert _dechunk(received.partition(b"\r\n\r\n")[2]) == part * total
        await eventually(lambda: in_flight(gw) == 0)
