"""Read timeouts on the streamed relay (issue 17): the body is bounded by the gateway's
own watch (aiohttp's per-read timer is switched off for it), and a keep-alive
connection reused after a stream still bounds the wait for the next answer."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from .conftest import eventually
from .test_upstream import (
    CHAT,
    EVENT,
    SSE_HEAD,
    WAIT,
    chat,
    gateway,
    in_flight,
    raw_upstream,
    upstream_errors,
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.asyncio
async def test_a_stream_that_falls_silent_ends_with_a_timeout_event() -> None:
    """Valid framing, then silence past read_timeout: the client has its event, then an
    SSE error event; counted as kind=timeout; the slot is freed."""
    done = asyncio.Event()

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + _chunk(EVENT))
        await writer.drain()
        await done.wait()

    async with raw_upstream(script) as url, gateway(url, read_timeout=0.3) as (gw, client):
        async with client.post(CHAT, data=chat(stream=True)) as r:
            assert r.status == 200
            body = await asyncio.wait_for(r.read(), WAIT)
        done.set()
        events = [e for e in body.split(b"\n\n") if e]
        assert events[0] + b"\n\n" == EVENT
        error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
        assert error["code"] == "upstream_timeout"
        await eventually(lambda: in_flight(gw) == 0)
        assert await upstream_errors(client) == {"timeout": 1.0}


@pytest.mark.asyncio
async def test_connection_reused_after_a_stream_still_times_out_a_silent_answer() -> None:
    """The stream's body turned aiohttp's per-read timer off on its connection; the next
    request on that same keep-alive connection gets it back: a backend that never
    answers it is a 504, not a wait without end."""
    done = asyncio.Event()
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(SSE_HEAD + _chunk(EVENT))
        await writer.drain()
        await asyncio.sleep(0.05)  # the rest later: the relay reads the body in parts
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request, on this connection
        await done.wait()  # never answered

    async with raw_upstream(script) as url, gateway(url, read_timeout=0.3) as (_, client):
        async with client.post(CHAT, data=chat(stream=True)) as r:
            assert r.status == 200
            assert (await asyncio.wait_for(r.read(), WAIT)).endswith(b"[DONE]\n\n")

        async def ask() -> tuple[int, dict[str, Any]]:
            async with client.post(CHAT, data=chat()) as r:
                return r.status, (await r.json())["error"]

        status, error = await asyncio.wait_for(ask(), WAIT)  # no answer would hang here
        done.set()
        assert connections == 1  # the same upstream connection served both
        assert status == 504
        assert error["code"] == "upstream_timeout"
