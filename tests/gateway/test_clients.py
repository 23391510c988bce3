"""Hostile and slow clients: header size limit, header/body timeouts, connection cap.

Each test speaks raw HTTP/1.1 on a loopback socket to a gateway, once on each of the
client-facing servers (`server.http`: the built-in one and uvicorn with the guarded
protocol): the limits are the same on both.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from sluicegate.gateway import serve_in_background

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

HTTP_SERVERS = ("builtin", "uvicorn")
_http = {"server": HTTP_SERVERS[0]}


@pytest.fixture(autouse=True, params=HTTP_SERVERS)
def http_server(request: pytest.FixtureRequest) -> str:
    """Which server `stack` starts: every test runs on both."""
    _http["server"] = request.param
    return str(request.param)


BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
WAIT = 10.0


@contextlib.asynccontextmanager
async def stack(**server: Any) -> AsyncIterator[tuple[Gateway, FakeUpstream, tuple[str, int]]]:
    fake = FakeUpstream()
    async with serve_app(fake) as url:
        settings = {"host": "127.0.0.1", "port": 0, "http": _http["server"], **server}
        cfg = make_config([url], server=settings)
        async with serve_in_background(cfg) as gw:
            host, port = str(gw.url).removeprefix("http://").rsplit(":", 1)
            yield gw, fake, (host, int(port))


def request(extra_headers: bytes = b"", body: bytes = BODY, close: bool = True) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra_headers
        + b"content-length: %d\r\n" % len(body)
        + (b"connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the next response, 0 if the connection closed without one."""
    line = await asyncio.wait_for(reader.readline(), WAIT)
    return int(line.split(b" ")[1]) if line else 0


async def exchange(address: tuple[str, int], data: bytes) -> int:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        return await status_of(reader)
    except ConnectionError:
        return 0
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_oversized_headers_get_431_and_reach_no_backend() -> None:
    """Headers past max_header_bytes (default 64 KiB) are refused with 431; a request
    just under it is served."""
    async with stack() as (_, fake, address):
        assert await exchange(address, request(b"x-pad: " + b"a" * 60_000 + b"\r\n")) == 200
        big = request(b"x-pad: " + b"a" * 1_000_000 + b"\r\n")
        assert await exchange(address, big) == 431
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nx-pad: " + b"a" * 70_000)
        await writer.drain()
        assert await status_of(reader) == 431
        writer.close()
        assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_silent_connection_is_closed_after_the_header_timeout() -> None:
    """A client that connects and sends nothing gets 408 and is disconnected."""
    async with stack(header_timeout=0.2) as (_, _fake, address):
        reader, writer = await asyncio.open_connection(*address)
        assert await status_of(reader) == 408
        assert await asyncio.wait_for(reader.read(), WAIT) != b"" or reader.at_eof()
        writer.close()


@pytest.mark.asyncio
async def test_trickled_headers_are_cut_at_the_header_timeout() -> None:
    """Bytes that keep coming do not extend the header deadline (slowloris)."""
    async with stack(header_timeout=0.3) as (_, fake, address):
        reader, writer = await asyncio.open_connection(*address)
        head = request(b"x-slow: " + b"a" * 200 + b"\r\n")
        status: asyncio.Future[int] = asyncio.ensure_future(status_of(reader))
        with contextlib.suppress(ConnectionError):
            for byte in head:
                if status.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.01)
        assert await status == 408
        writer.close()
        assert fake.requests == []


@pytest.mark.asyncio
async def test_trickled_body_is_cut_at_the_body_timeout() -> None:
    """A body that stalls after the headers gets 408; nothing reaches a backend."""
    async with stack(body_timeout=0.3) as (gw, fake, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(request()[:-10])
        await writer.drain()
        assert await status_of(reader) == 408
        writer.close()
        assert fake.requests == []
        await eventually(lambda: gw.pools["default"].controller.statistics().submitted == 0)


@pytest.mark.asyncio
async def test_idle_bytes_after_a_response_do_not_keep_a_connection() -> None:
    """Blank lines trickled on a keep-alive connection are bounded by the header timeout."""
    async with stack(header_timeout=0.3, keep_alive_timeout=30) as (_, _fake, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(request(close=False))
        assert await status_of(reader) == 200
        closed = asyncio.ensure_future(reader.read())  # the rest, until the server closes
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                if closed.done():
                    break
                writer.write(b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
        assert closed.done()
        writer.close()


@pytest.mark.asyncio
async def test_good_client_is_served_while_slow_connections_fill_the_cap() -> None:
    """With the connection cap full of silent connections, a new client is served: the
    longest-waiting silent connection makes room."""
    async with stack(max_connections=8, header_timeout=60) as (_, fake, address):
        slow = [await asyncio.open_connection(*address) for _ in range(20)]
        for _ in range(5):
            assert await exchange(address, request()) == 200
        assert len(fake.requests) == 5
        for _, writer in slow:
            writer.close()


@pytest.mark.asyncio
async def test_connection_past_the_cap_of_busy_ones_is_refused_at_once() -> None:
    """When every connection has a request in progress, a newcomer gets 503 at once."""
    async with stack(max_connections=2) as (_, fake, address):
        fake.hold = asyncio.Event()
        busy = [asyncio.ensure_future(exchange(address, request())) for _ in range(2)]
        await eventually(lambda: len(fake.requests) == 2)
        assert await exchange(address, request()) in (503, 0)
        fake.hold.set()
        assert await asyncio.gather(*busy) == [200, 200]
        assert await exchange(address, request()) == 200


@pytest.mark.asyncio
async def test_pipelined_requests_are_both_answered() -> None:
    """Two requests in one write on a keep-alive connection get two answers."""
    async with stack(header_timeout=5) as (_, fake, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(request(close=False) + request(close=True))
        assert await status_of(reader) == 200
        rest = await asyncio.wait_for(reader.read(), WAIT)
        assert rest.count(b"HTTP/1.1 200") == 1
        writer.close()
        assert len(fake.requests) == 2


@pytest.mark.asyncio
async def test_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    """server.keep_alive_timeout bounds how long an idle connection is kept."""
    async with stack(keep_alive_timeout=1) as (_, _fake, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(request(close=False))
        assert await status_of(reader) == 200
        rest = await asyncio.wait_for(reader.read(), WAIT)  # returns when the server closes
        assert rest.endswith(b"}")
        writer.close()
