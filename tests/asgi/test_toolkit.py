"""The shared ASGI toolkit: body reading, lifespan, listening, serving (loopback only)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest

from sluicegate.asgi import (
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    lifespan,
    listen,
    read_body,
    serving,
    url_of,
    uvicorn_server,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def _messages(*parts: Message) -> Callable[[], Awaitable[Message]]:
    queue = list(parts)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def _body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


@pytest.mark.asyncio
async def test_a_body_in_one_part_is_returned_as_sent() -> None:
    """The usual case: one message, its bytes object itself, counted once."""
    held: list[int] = []
    data = b'{"model": "m"}'
    body = await read_body(_messages(_body(data)), 100, held.append)
    assert body is data
    assert held == [len(data)]


@pytest.mark.asyncio
async def test_a_body_in_parts_is_gathered_and_each_part_counted() -> None:
    """Parts are joined in one bytearray; empty parts are not counted."""
    held: list[int] = []
    receive = _messages(_body(b"ab", True), _body(b"", True), _body(b"cde"))
    body = await read_body(receive, 5, held.append)
    assert body == b"abcde" and isinstance(body, bytearray)
    assert held == [2, 3]


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_refused_before_the_part_is_counted() -> None:
    """Limit exactly reached is fine; one byte more raises before `hold` sees the part."""
    held: list[int] = []
    receive = _messages(_body(b"abc", True), _body(b"def", True), _body(b"g"))
    with pytest.raises(BodyTooLarge) as info:
        await read_body(receive, 5, held.append)
    assert info.value.limit == 5
    assert held == [3]


@pytest.mark.asyncio
async def test_hold_may_refuse_the_request() -> None:
    """An exception from `hold` (the gateway's memory budget) ends the read."""

    def refuse(n: int) -> None:
        raise RuntimeError(f"no room for {n}")

    with pytest.raises(RuntimeError, match="no room for 3"):
        await read_body(_messages(_body(b"abc", True), _body(b"d")), hold=refuse)


@pytest.mark.asyncio
async def test_a_client_that_leaves_mid_body_is_reported() -> None:
    receive = _messages(_body(b"abc", True), {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await read_body(receive)


@pytest.mark.asyncio
async def test_lifespan_handshake_runs_the_shutdown_hook() -> None:
    sent: list[Message] = []
    stopped: list[bool] = []

    async def send(message: Message) -> None:
        sent.append(message)

    receive = _messages({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await lifespan(receive, send, lambda: stopped.append(True))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert stopped == [True]


def test_listen_names_the_address_it_cannot_bind() -> None:
    """Port 0 gives a free port; a taken one fails with the address in the message."""
    with listen("127.0.0.1", 0) as first:
        host, port = first.getsockname()[:2]
        assert (host, url_of(first)) == ("127.0.0.1", f"http://127.0.0.1:{port}")
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))  # bound, not listening: SO_REUSEADDR cannot share it
        try:
            busy = taken.getsockname()[1]
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{busy}"):
                listen("127.0.0.1", busy)
        finally:
            taken.close()


@pytest.mark.asyncio
async def test_serving_answers_on_the_socket_and_closes_it() -> None:
    """An app served on a socket bound beforehand answers at once; at the end of the
    block the listener is closed (the port refuses connections)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": bytes(body[::-1])})

    sock = listen("127.0.0.1", 0)
    url = url_of(sock)
    server = uvicorn_server(app, timeout_graceful_shutdown=1)
    async with aiohttp.ClientSession() as session:
        async with serving(server, sock), session.post(url + "/", data=b"abc") as response:
            assert (response.status, await response.read()) == (200, b"cba")
        assert sock.fileno() == -1
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/")


@pytest.mark.asyncio
async def test_uvicorn_adds_no_headers_of_its_own() -> None:
    """No `server` or `date` header from uvicorn: the gateway relays upstream's."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sock = listen("127.0.0.1", 0)
    async with (
        serving(uvicorn_server(app), sock),
        aiohttp.ClientSession() as session,
        session.get(url_of(sock)) as response,
    ):
        assert response.status == 204
        assert "server" not in response.headers and "date" not in response.headers


def test_import_sluicegate_does_not_load_the_toolkit() -> None:
    """The toolkit belongs to the servers on top; the core stays stdlib-only."""
    code = (
        "import sys, sluicegate\n"
        "loaded = [m for m in ('sluicegate.asgi', 'uvicorn') if m in sys.modules]\n"
        "print(loaded)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.asyncio
async def test_the_toolkit_reads_bodies_as_the_event_loop_delivers_them() -> None:
    """read_body waits on receive(): a part arriving later is awaited, not polled."""
    parts: asyncio.Queue[Message] = asyncio.Queue()
    reading = asyncio.ensure_future(read_body(parts.get))
    await parts.put(_body(b"a", True))
    await asyncio.sleep(0)
    assert not reading.done()
    await parts.put(_body(b"b"))
    assert await reading == b"ab"
