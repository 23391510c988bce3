"""Prototype proxy stacks, to measure the gateway's HTTP legs against their alternatives
(issue 17): the same non-streamed relay, with no flow control, on

* ``uvicorn-aiohttp``: uvicorn (uvloop, httptools) + raw ASGI + aiohttp's client, tuned
  as the gateway's (the gateway's own stack);
* ``uvicorn-lean``: the same server + a small HTTP/1.1 keep-alive client on an asyncio
  protocol with httptools' response parser;
* ``lean-lean``: an asyncio protocol server with httptools' request parser + that
  client: the byte pump, the floor of a Python proxy;
* granian: ``granian --interface asgi sluicegate.bench._stacks:asgi_aiohttp`` (granian
  is not a dependency; install it in a separate virtualenv to measure).

Run one: ``python -c 'from sluicegate.bench._stacks import main; main()' --stack NAME
--port P --upstream U``; it prints ``listening`` when ready. The lean client handles
only what the bench upstream sends (content-length or chunked answers, keep-alive): it
is a measurement, not a client for the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, Final, cast, final

import httptools

__all__ = ["LeanClient", "asgi_aiohttp", "main"]

_UPSTREAM: Final = int(os.environ.get("SLUICEGATE_STACK_UPSTREAM", "0"))
_SKIP: Final = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})

Scope = dict[str, Any]


@final
class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self, idle: list[_Connection]) -> None:
        self._idle = idle
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._idle:
            self._idle.remove(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("upstream closed"))

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, body))
        self._idle.append(self)

    def send(self, head: bytes, body: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        self._headers, self._body = [], []
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return waiter


@final
class LeanClient:
    """HTTP/1.1 keep-alive to one upstream: a pool of `_Connection` protocols."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[_Connection] = []
        self._hostline = f"host: {host}:{port}\r\n".encode()

    async def request(
        self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one request; returns (status, headers, whole body)."""
        if self._idle:
            conn = self._idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                lambda: _Connection(self._idle), self._host, self._port
            )
        lines = [method, b" ", path, b" HTTP/1.1\r\n", self._hostline]
        for name, value in headers:
            if name not in _SKIP:
                lines += (name, b": ", value, b"\r\n")
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        result: tuple[int, list[tuple[bytes, bytes]], bytes] = await conn.send(
            b"".join(lines), body
        )
        return result


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _asgi(relay: Any) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        status, headers, data = await relay(scope, body)
        out = [(n, v) for n, v in headers if n not in _SKIP]
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    return app


def _aiohttp_relay(port: int) -> Any:
    import aiohttp
    from yarl import URL

    session: list[aiohttp.ClientSession] = []
    base = f"http://127.0.0.1:{port}"

    async def relay(scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if not session:
            session.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                )
            )
        headers = [
            (n.decode("latin-1"), v.decode("latin-1"))
            for n, v in scope["headers"]
            if n not in _SKIP
        ]
        async with session[0].request(
            scope["method"], URL(base + scope["path"], encoded=True), data=body, headers=headers
        ) as resp:
            data = await resp.read()
            return resp.status, [(n.lower(), v) for n, v in resp.raw_headers], data

    return relay


def _lean_relay(port: int) -> Any:
    client = LeanClient("127.0.0.1", port)

    async def relay(scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return await client.request(
            scope["method"].encode(), scope["raw_path"], scope["headers"], body
        )

    return relay


#: For granian: ``SLUICEGATE_STACK_UPSTREAM=PORT granian --interface asgi ...:asgi_aiohttp``.
asgi_aiohttp: Final = _asgi(_aiohttp_relay(_UPSTREAM))


@final
class _LeanServer(asyncio.Protocol):
    """HTTP/1.1 keep-alive server: parse with httptools, relay with `LeanClient`."""

    def __init__(self, client: LeanClient) -> None:
        self._client = client
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        headers, body = self._headers, b"".join(self._body)
        self._headers, self._body = [], []
        asyncio.get_running_loop().create_task(self._relay(method, self._url, headers, body))

    async def _relay(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        status, out, data = await self._client.request(method, url, headers, body)
        lines = [b"HTTP/1.1 %d OK\r\n" % status]
        for name, value in out:
            if name not in _SKIP:
                lines += (name, b": ", value, b"\r\n")
        lines.append(b"content-length: %d\r\n\r\n" % len(data))
        lines.append(data)
        assert self._transport is not None
        self._transport.write(b"".join(lines))


def main() -> None:
    """Serve one stack on 127.0.0.1 (uvloop) until killed."""
    import uvloop

    parser = argparse.ArgumentParser(prog="stacks")
    parser.add_argument("--stack", choices=["uvicorn-aiohttp", "uvicorn-lean", "lean-lean"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> None:
        if args.stack == "lean-lean":
            client = LeanClient("127.0.0.1", args.upstream)
            loop = asyncio.get_running_loop()
            server = await loop.create_server(lambda: _LeanServer(client), "127.0.0.1", args.port)
            print("listening", flush=True)  # noqa: T201 - the parent waits for this line
            await server.serve_forever()
        import uvicorn

        relay = (_aiohttp_relay if args.stack == "uvicorn-aiohttp" else _lean_relay)(args.upstream)
        config = uvicorn.Config(
            _asgi(relay),
            host="127.0.0.1",
            port=args.port,
            http="httptools",
            loop="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
        )
        print("listening", flush=True)  # noqa: T201
        await uvicorn.Server(config).serve()

    uvloop.run(serve())
