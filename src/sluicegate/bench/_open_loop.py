"""Part 2's open loop: requests at a fixed rate, whatever the answers do, at the least
CPU a request this process can spend.

It shares the load core with the upstream. At 80 % of the gateway's rate the gateway's
own client as a sender (a task, a timer and a pooled request per send, 72-153 us of CPU
each) took that core past its capacity, and the direct path's own p99 reached seconds:
nothing was left to compare. Here a timer callback writes prebuilt request bytes on
idle keep-alive connections, and an answer is parsed by httptools (llhttp) with one
Python callback, at its end. No task, no Future, no pipelining: a request waits in a
queue for an idle connection, and its latency counts from when it was due, not from when
it was sent (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Final, final
from urllib.parse import urlsplit

import httptools

__all__ = ["OpenLoopResult", "open_loop"]

#: The sender's timer step: the requests due within one go out together.
TICK: Final = 0.001

#: Connections opened at most; beyond it, due requests queue (their wait counts).
MAX_CONNECTIONS: Final = 512


@final
@dataclass(slots=True)
class OpenLoopResult:
    """Latencies in seconds from each request's due time to its answer's end, and how
    many of them failed (a non-2xx status, a lost connection or a refused connect: each
    counts with the time it took, so an overloaded target's failures are not left out)."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0


@final
class _Sender(asyncio.Protocol):
    """One keep-alive connection: one request at a time (`busy`), due at `due`."""

    __slots__ = ("_owner", "_parser", "busy", "due", "transport")

    def __init__(self, owner: _OpenLoop) -> None:
        self._owner = owner
        self._parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.due = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: not a subclass

    def send(self, due: float, request: bytes) -> None:
        assert self.transport is not None
        self.busy, self.due = True, due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_message_complete(self) -> None:
        self.busy = False
        ok = 200 <= self._parser.get_status_code() < 300
        self._owner.answered(self, ok, self._parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
            self._owner.lost(self)


@final
class _OpenLoop:
    """Sends `n` requests at `rate` from `start()`; `done` resolves when all ended."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], rate: float, n: int) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._request = (
            f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            f"content-type: application/json\r\n{extra}content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._rate, self._n = rate, n
        self._loop = asyncio.get_running_loop()
        self._idle: list[_Sender] = []
        self._waiting: collections.deque[float] = collections.deque()
        self._open = self._sent = self._ended = 0
        self._began = 0.0
        self.result = OpenLoopResult()
        self.done: asyncio.Future[None] = self._loop.create_future()

    async def warm(self, connections: int) -> None:
        """Open `connections` idle connections before the clock starts (nothing waits
        yet, so each goes idle; one refused is just not there)."""
        k = min(connections, MAX_CONNECTIONS)
        self._open += k
        await asyncio.gather(*(self._connect() for _ in range(k)))

    def start(self) -> None:
        self._began = time.perf_counter()
        self._tick()

    def _tick(self) -> None:
        """Send every request now due; come back when the next one is."""
        now = time.perf_counter()
        while self._sent < self._n:
            due = self._began + self._sent / self._rate
            if due > now:
                # uvloop's timers count whole milliseconds: a shorter delay would fire at
                # once, again and again, and the sender would spin on the load core.
                self._loop.call_later(max(due - now, TICK), self._tick)
                return
            self._sent += 1
            if self._idle:
                self._idle.pop().send(due, self._request)
            else:
                self._waiting.append(due)
                self._grow()

    def _grow(self) -> None:
        if self._open < MAX_CONNECTIONS:
            self._open += 1  # counted from the connect on, so a burst opens no more
            self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        """Open one connection (already counted in `_open`) and give it work or idle it."""
        try:
            _, sender = await self._loop.create_connection(
                lambda: _Sender(self), self._host, self._port
            )
        except OSError:
            self._open -= 1
            if self._waiting:  # the request that asked for it fails
                self._end(self._waiting.popleft(), ok=False)
            return
        self._next(sender)

    def _next(self, sender: _Sender) -> None:
        if self._waiting:
            sender.send(self._waiting.popleft(), self._request)
        else:
            self._idle.append(sender)

    def answered(self, sender: _Sender, ok: bool, keep_alive: bool) -> None:
        self._end(sender.due, ok=ok)
        if keep_alive:
            self._next(sender)
        else:
            sender.close()

    def lost(self, sender: _Sender) -> None:
        self._open -= 1
        if sender.busy:
            self._end(sender.due, ok=False)
        elif sender in self._idle:
            self._idle.remove(sender)
        if self._waiting:
            self._grow()

    def _end(self, due: float, *, ok: bool) -> None:
        self.result.latencies.append(time.perf_counter() - due)
        self.result.failed += not ok
        self._ended += 1
        if self._ended == self._n and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        for sender in list(self._idle):
            sender.close()


async def open_loop(
    url: str,
    body: bytes,
    rate: float,
    seconds: float,
    headers: dict[str, str] | None = None,
    *,
    warm: int = 64,
) -> OpenLoopResult:
    """POST `body` to `url` at `rate` requests a second for `seconds`; every answer read
    whole. `warm` connections are opened before the first request is due (more open as
    requests find none idle). Returns the latencies from each request's due time."""
    sender = _OpenLoop(url, body, headers or {}, rate, max(int(rate * seconds), 1))
    await sender.warm(warm)
    sender.start()
    try:
        await sender.done
    finally:
        sender.close()
    return sender.result
