"""A request leaves no reference cycle behind: its objects are freed by reference
counting when it ends, never left to the cyclic garbage collector (whose passes stop
the event loop for milliseconds under load)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import eventually
from .test_proxy import CHAT, SERVERS, chat, stack, stats

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sluicegate.gateway import Gateway


def _ours(garbage: list[Any]) -> list[str]:
    """The names of our types among `garbage` (the servers and clients of the tests
    have cycles of their own)."""
    return sorted(
        type(o).__qualname__ for o in garbage if type(o).__module__.startswith("sluicegate")
    )


class _Cycles:
    """What the cyclic collector would have had to free while inside."""

    def __init__(self) -> None:
        self.found: list[str] = []


@contextlib.contextmanager
def collected() -> Iterator[_Cycles]:
    """Collect nothing while inside; then what only the collector could free (saved by
    ``DEBUG_SAVEALL``, not freed) is named in `found`."""
    cycles = _Cycles()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield cycles
        gc.collect()
        cycles.found = _ours(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _port(gw: Gateway) -> int:
    return int(str(gw.url).rsplit(":", 1)[1].strip("/"))


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()  # connection: close, so the answer ends with the close
    writer.close()
    await writer.wait_closed()
    return answer


def _post(body: bytes, *, close: bool) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%s\r\n%s"
        % (CHAT.encode(), len(body), b"connection: close\r\n" if close else b"", body)
    )


async def _cycles_after(port: int, bodies: list[bytes], *, times: int) -> list[str]:
    """Each body POSTed `times` times, a connection each: what was left in cycles."""
    with collected() as cycles:
        for body in bodies:
            for _ in range(times):
                answer = await _exchange(port, _post(body, close=True))
                assert answer.startswith(b"HTTP/1.1 ")
        await asyncio.sleep(0.05)  # the closes reach the gateway
    return cycles.found


@pytest.mark.asyncio
@pytest.mark.parametrize("server", SERVERS, ids=["builtin", "uvicorn"])
async def test_requests_leave_no_reference_cycles(server: dict[str, Any]) -> None:
    """A plain answer, a stream and a 400, each on its own connection (a client that
    does not keep connections alive)."""
    async with stack(server=server) as (gw, _fake, _client):
        port = _port(gw)
        await _exchange(port, _post(chat(), close=True))  # warm up: the pool's connection
        found = await _cycles_after(port, [chat(), chat(stream=True), b"{not json"], times=5)
        assert found == [], sorted(set(found))


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["500", "abort"])
async def test_failed_upstream_answers_leave_no_reference_cycles(mode: str) -> None:
    """An upstream error status, and an upstream that breaks its connection mid-stream
    (the gateway's connection to it is closed and a new one opened)."""
    async with stack() as (gw, fake, _client):
        port = _port(gw)
        await _exchange(port, _post(chat(), close=True))
        fake.mode = mode
        found = await _cycles_after(port, [chat(), chat(stream=True)], times=3)
        assert found == [], sorted(set(found))


@pytest.mark.asyncio
async def test_rejected_expired_and_abandoned_waits_leave_no_reference_cycles() -> None:
    """Under overload: a full band's 429, a TTL's 503, and a client that leaves while
    its request waits (the wait is cancelled)."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    fc = {"default_band": {"max_requests": 1}}
    async with stack(saturation=sat, flow_control=fc) as (gw, fake, _client):
        port = _port(gw)
        fake.hold = asyncio.Event()
        running = asyncio.ensure_future(_exchange(port, _post(chat(), close=True)))
        await eventually(lambda: len(fake.requests) == 1)
        with collected() as cycles:
            for _ in range(3):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(_post(chat(), close=False))
                await eventually(lambda: stats(gw).queued_requests == 1)
                answer = await _exchange(port, _post(chat(), close=True))
                assert answer.startswith(b"HTTP/1.1 429 ")
                writer.close()  # leaves while queued
                await writer.wait_closed()
                await eventually(lambda: stats(gw).queued_requests == 0)
                ttl = b"x-sluicegate-ttl-ms: 10\r\n"
                answer = await _exchange(
                    port, _post(chat(), close=True).replace(b"\r\n", b"\r\n" + ttl, 1)
                )
                assert answer.startswith(b"HTTP/1.1 503 ")
            await asyncio.sleep(0.05)
        fake.hold.set()
        assert (await running).startswith(b"HTTP/1.1 200 ")
        assert cycles.found == [], sorted(set(cycles.found))
