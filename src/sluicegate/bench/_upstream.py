"""The minimal fast upstream of parts 2 and 3: an HTTP/1.1 keep-alive server on a raw
asyncio protocol, so that what the gateway adds is not hidden behind a slow backend.
`--server aiohttp` serves the same answers from a minimal `aiohttp.web` application
instead: the baseline issue 17 states its targets against (a typical Python upstream,
several times the raw protocol's CPU per request).

It answers every request with a fixed chat completion, or, when the body asks for a
stream, with `events` SSE chunks `gap` seconds apart (or as many as the body's
``"events": N`` asks for). Run it as its own process:

    python -c 'from sluicegate.bench._upstream import main; main()' --port 8000 [--server aiohttp]

It prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any, Final, cast

__all__ = [
    "ANSWER",
    "BODY",
    "EVENT",
    "SERVERS",
    "STREAM_BODY",
    "Upstream",
    "run_upstream",
]

#: The non-streamed request the load sends, and the upstream's answer to it.
BODY: Final = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
ANSWER: Final = (
    b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}'
)
#: The streamed request, and one SSE event of the answer.
STREAM_BODY: Final = (
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
)
EVENT: Final = (
    b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"delta":{"content":"t"}}]}\n\n'
)

#: The upstream's server: the raw protocol below, or a minimal aiohttp.web application.
SERVERS: Final = ("raw", "aiohttp")

#: Any JSON spacing: a gateway may re-serialise the body (LiteLLM writes ``"stream":true``).
_STREAM: Final = re.compile(rb'"stream":\s*true')
_EVENTS: Final = re.compile(rb'"events":\s*([0-9]{1,6})')


class Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive; JSON answers, or SSE when the body asks for a stream."""

    def __init__(self, events: int, gap: float) -> None:
        self.events, self.gap = events, gap
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            length = 0
            if (i := head.find(b"content-length:")) >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            if _STREAM.search(body):
                # A body may ask for its own stream length (part 3's marginal cost).
                asked = _EVENTS.search(body)
                events = int(asked.group(1)) if asked else self.events
                # Keep a reference: the loop holds tasks only weakly.
                task = asyncio.get_running_loop().create_task(self._stream(self.transport, events))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
                )  # fmt: skip

    async def _stream(self, transport: asyncio.Transport, events: int) -> None:
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"
        for _ in range(events):
            await asyncio.sleep(self.gap)
            if transport.is_closing():
                return
            transport.write(chunk)
        transport.write(b"0\r\n\r\n")


def run_upstream(port: int, events: int, gap: float, server: str = "raw") -> None:
    """Serve on 127.0.0.1:`port` (on uvloop) until killed; prints ``ready`` when listening.

    `server` is ``raw`` (the protocol above) or ``aiohttp`` (`_aiohttp_app`).
    """
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if server == "aiohttp":
            from aiohttp import web

            runner = web.AppRunner(_aiohttp_app(events, gap), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        else:
            await loop.create_server(lambda: Upstream(events, gap), "127.0.0.1", port)
        print("ready", flush=True)  # noqa: T201 - the parent process waits for this line
        await loop.create_future()  # serve until killed

    uvloop.run(main())


def _aiohttp_app(events: int, gap: float) -> Any:
    """The same answers as `Upstream`, from a minimal aiohttp.web application."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not _STREAM.search(body):
            return web.Response(body=ANSWER, content_type="application/json")
        asked = _EVENTS.search(body)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(int(asked.group(1)) if asked else events):
            await asyncio.sleep(gap)
            await response.write(EVENT)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{path:.*}", chat)
    return app


def main() -> None:
    """The process entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=200, help="SSE events per stream")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="ms between SSE events")
    parser.add_argument("--server", choices=SERVERS, default="raw", help="what serves")
    args = parser.parse_args()
    run_upstream(args.port, args.events, args.gap_ms / 1000, args.server)


if __name__ == "__main__":
    main()
