"""The built-in HTTP/1.1 server (`HttpServer`), spoken to in raw bytes on loopback.

Hostile-client limits are tested through the gateway (tests/gateway/test_clients.py);
here: framing (a streamed head sent when ready), keep-alive, pipelining, 100-continue,
back-pressure, disconnects, the `sluicegate.body` extension,
failures of the app, and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.asgi import HttpServer, Limits, Message, listen, read_body, serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.asgi import Receive, Scope, Send

WAIT = 10.0


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the method, path, query and body it got; ``/stream`` in parts."""
    body = bytes(await read_body(receive))
    text = b"%s %s ?%s %s" % (
        scope["method"].encode(),
        scope["path"].encode(),
        scope["query_string"],
        body,
    )
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", b"%d" % len(text)), (b"x-seen", b"1")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": text})


@contextlib.asynccontextmanager
async def running(
    app: Any = echo, limits: Limits | None = None, graceful_timeout: float | None = None
) -> AsyncIterator[tuple[HttpServer, tuple[str, int]]]:
    sock = listen("127.0.0.1", 0)
    server = HttpServer(app, limits, graceful_timeout=graceful_timeout)
    address = sock.getsockname()[:2]
    async with serving(server, sock):
        yield server, address


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers, body (content-length, chunked, or to the close)."""
    status_line = await asyncio.wait_for(reader.readline(), WAIT)
    if not status_line:
        return 0, {}, b""
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if b"content-length" in headers:
        return status, headers, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        return status, headers, b"".join(parts)
    if status in (100, 204, 304):
        return status, headers, b""
    return status, headers, await reader.read()


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path,
        len(body),
        extra,
        body,
    )


@pytest.mark.asyncio
async def test_keep_alive_requests_share_a_connection_and_see_their_scope() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await echo(scope, receive, send)

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/a%20b?x=1", b"hello", b"X-Custom: V\r\n"))
        assert await response(reader) == (
            200,
            {b"content-length": b"20", b"x-seen": b"1"},
            b"POST /a b ?x=1 hello",
        )
        writer.write(post(b"/again", b""))
        assert (await response(reader))[2] == b"POST /again ? "
        writer.close()
    scope = seen[0]
    assert scope["raw_path"] == b"/a%20b"
    assert (b"x-custom", b"V") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == address
    assert scope["http_version"] == "1.1"


@pytest.mark.asyncio
async def test_a_response_without_length_is_chunked_on_http11_and_closed_on_http10() -> None:
    async with running() as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/stream", b""))
        status, headers, body = await response(reader)
        assert (status, headers[b"transfer-encoding"], body) == (200, b"chunked", b"one,two,three")
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        status, headers, body = await response(reader)
        assert (status, body) == (200, b"one,two,three")
        assert headers[b"connection"] == b"close"
        assert await reader.read() == b""
        writer.close()


@pytest.mark.asyncio
async def test_a_streamed_head_is_sent_when_ready_even_with_no_part_or_a_failure() -> None:
    """A head without a content-length waits for a first part sent in the same loop
    iteration, never longer: an app that starts and then waits, or starts and then
    fails, still shows its head."""
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/fail":
            raise ValueError("boom")
        await release.wait()
        await send({"type": "http.response.body", "body": b"late"})

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/wait", b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        release.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), WAIT) == (
            b"4\r\nlate\r\n0\r\n\r\n"
        )
        writer.write(post(b"/fail", b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, no final chunk
        writer.close()


@pytest.mark.asyncio
async def test_the_body_extension_writes_parts_from_a_plain_call() -> None:
    """``sluicegate.body``: parts written from a callback, outside the app's task,
    arrive in order and framed, and the app's own end follows them."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        body = scope["extensions"]["sluicegate.body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        done = asyncio.get_running_loop().create_future()

        def from_a_callback() -> None:
            for part in (b"one,", b"two,"):
                assert body["write"](part) is False  # the socket takes it: no drain asked
            done.set_result(None)

        asyncio.get_running_loop().call_soon(from_a_callback)
        await done
        await body["drain"]()
        await send({"type": "http.response.body", "body": b"three"})

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/", b""))
        status, headers, body = await response(reader)
        assert (status, headers[b"transfer-encoding"], body) == (200, b"chunked", b"one,two,three")
        writer.close()


@pytest.mark.asyncio
async def test_head_and_204_have_no_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = 204 if scope["path"] == "/none" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"dropped"})

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET /none HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding" not in head
        assert await response(reader) == (204, {}, b"")
        writer.close()


@pytest.mark.asyncio
async def test_expect_100_continue_is_answered_when_the_app_reads() -> None:
    async with running() as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"body")
        assert (await response(reader))[2] == b"POST /x ? body"
        writer.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_pipelined_requests_are_answered_in_order_however_the_bytes_are_split(
    cuts: list[int],
) -> None:
    data = post(b"/1", b"first") + post(b"/stream", b"") + post(b"/3", b"x" * 70)
    bounds = [0, *sorted(cuts), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]

    async def scenario() -> list[bytes]:
        async with running() as (_, address):
            reader, writer = await asyncio.open_connection(*address)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            bodies = [(await response(reader))[2] for _ in range(3)]
            writer.close()
            return bodies

    assert asyncio.run(scenario()) == [
        b"POST /1 ? first",
        b"one,two,three",
        b"POST /3 ? " + b"x" * 70,
    ]


@pytest.mark.asyncio
async def test_a_large_body_arrives_whole_through_back_pressure() -> None:
    body = bytes(range(256)) * 40_000  # 10 MB, read in parts with reading paused between
    async with (
        running() as (_, address),
        aiohttp.ClientSession() as session,
        session.post(f"http://{address[0]}:{address[1]}/big", data=io.BytesIO(body)) as resp,
    ):
        assert await resp.read() == b"POST /big ? " + body


@pytest.mark.asyncio
async def test_the_app_hears_the_client_leave_and_the_response_end() -> None:
    heard: list[Message] = []
    after_response: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/wait":
            heard.append(await receive())  # pending until the client leaves
            return
        pending = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        after_response.set_result(await pending)

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/now", b""))
        assert (await response(reader))[2] == b"done"
        assert (await asyncio.wait_for(after_response, WAIT))["type"] == "http.disconnect"
        writer.write(post(b"/wait", b""))
        await asyncio.sleep(0.05)
        writer.close()
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
    assert heard == [{"type": "http.disconnect"}]


@pytest.mark.asyncio
async def test_an_app_failure_is_500_before_the_start_and_a_close_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="sluicegate.http"):
        async with running(app) as (_, address):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(post(b"/early", b""))
            status, headers, _ = await response(reader)
            assert (status, headers[b"connection"]) == (500, b"close")
            writer.close()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(post(b"/late", b""))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200")
            rest = await asyncio.wait_for(reader.read(), WAIT)  # closed, no final chunk
            assert rest == b"4\r\npart\r\n"
            writer.close()
    assert caplog.text.count("exception in the ASGI application") == 2


@pytest.mark.asyncio
async def test_a_response_short_of_its_length_closes_the_connection() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"short"})

    async with running(app) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(post(b"/", b""))
        # read() returns at the close: the client sees the answer cut short.
        assert await asyncio.wait_for(reader.read(), WAIT) == (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"
        )
        writer.close()


@pytest.mark.asyncio
async def test_invalid_http_gets_400_and_an_upgrade_is_served_then_closed() -> None:
    async with running() as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await response(reader))[0] == 400
        writer.close()
        reader, writer = await asyncio.open_connection(*address)
        writer.write(
            b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        )
        status, _, body = await response(reader)
        assert (status, body) == (200, b"GET /up ? ")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()


@pytest.mark.asyncio
async def test_shutdown_closes_idle_connections_and_lets_open_responses_finish() -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    sock = listen("127.0.0.1", 0)
    server = HttpServer(app)
    await server.startup([sock])
    address = sock.getsockname()[:2]
    idle_reader, idle_writer = await asyncio.open_connection(*address)
    reader, writer = await asyncio.open_connection(*address)
    writer.write(post(b"/", b""))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(server.shutdown())
    assert await asyncio.wait_for(idle_reader.read(), WAIT) == b""
    assert not stopping.done()
    release.set()
    status, headers, body = await response(reader)
    assert (status, headers[b"connection"], body) == (200, b"close", b"finished")
    await asyncio.wait_for(stopping, WAIT)
    for w in (writer, idle_writer):
        w.close()


@pytest.mark.asyncio
async def test_shutdown_past_the_grace_cancels_what_still_runs() -> None:
    cancelled = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sock = listen("127.0.0.1", 0)
    server = HttpServer(app, graceful_timeout=0.1)
    await server.startup([sock])
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    writer.write(post(b"/", b""))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.shutdown(), WAIT)
    assert cancelled.is_set()
    assert (await response(reader))[:2] == (
        503,
        {
            b"content-type": b"text/plain; charset=utf-8",
            b"content-length": b"24",
            b"connection": b"close",
        },
    )
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()


@pytest.mark.asyncio
async def test_aiohttps_client_agrees() -> None:
    """aiohttp's client, with keep-alive and a streamed answer, against the server."""
    async with running() as (_, address), aiohttp.ClientSession() as session:
        base = url_of_address(address)
        for _ in range(3):
            async with session.post(base + "/stream", data=b"") as resp:
                assert await resp.read() == b"one,two,three"
            async with session.get(base + "/q?a=b") as resp:
                assert await resp.read() == b"GET /q ?a=b "


def url_of_address(address: tuple[str, int]) -> str:
    return f"http://{address[0]}:{address[1]}"
