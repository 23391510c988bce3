"""The open-loop sender of part 2 (`bench._open_loop`), against small servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from sluicegate.bench._open_loop import open_loop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """Serve `handler`; on exit, wait for every connection's handler to end (the sender
    closes its connections when it returns)."""
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x"
    finally:
        server.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)


def answering(
    statuses: list[int], seen: list[bytes], delay: float = 0.0
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A keep-alive server: reads each request whole, answers the next status of
    `statuses` (then 200s); a status of 0 closes the connection without an answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                status = statuses.pop(0) if statuses else 200
                if status == 0:
                    break
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n\r\nok" % status)
                await writer.drain()
        writer.close()

    return handler


@pytest.mark.asyncio
async def test_every_request_is_sent_and_answered_at_the_rate() -> None:
    seen: list[bytes] = []
    async with serving(answering([], seen)) as url:
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await open_loop(url, b'{"a": 1}', 400.0, 0.1, {"authorization": "Bearer k"})
        took = loop.time() - began
    assert len(result.latencies) == len(seen) == 40
    assert result.failed == 0
    assert took >= 0.095  # the last request is due at 39/400 s: not sent all at once
    assert all(s.startswith(b"POST /v1/x HTTP/1.1\r\n") for s in seen)
    assert all(b"authorization: Bearer k\r\n" in s and s.endswith(b'{"a": 1}') for s in seen)


@pytest.mark.asyncio
async def test_latency_counts_from_the_due_time_and_failures_count_with_theirs() -> None:
    """A slow answer's wait counts, and so do a 5xx and a connection closed unanswered:
    each once, none lost."""
    seen: list[bytes] = []
    async with serving(answering([503, 0], seen, delay=0.05)) as url:
        result = await open_loop(url, b"{}", 100.0, 0.05, warm=1)
    assert len(result.latencies) == 5
    assert result.failed == 2  # the 503 and the closed connection
    # Every answer took 0.05 s: those waits count (the unanswered close came at once).
    assert sum(latency >= 0.04 for latency in result.latencies) == 4


@pytest.mark.asyncio
async def test_a_refused_connect_fails_the_request_that_needed_it() -> None:
    async with serving(answering([], [])) as url:
        pass  # closed: nothing listens on the port now
    result = await open_loop(url, b"{}", 100.0, 0.03, warm=0)
    assert len(result.latencies) == 3
    assert result.failed == 3
