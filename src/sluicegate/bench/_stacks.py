"""Prototype proxy stacks, to measure the gateway's HTTP legs against their alternatives
(issue 17): the same non-streamed relay, with no flow control, on

* ``uvicorn-aiohttp``: uvicorn (uvloop, httptools) + raw ASGI + aiohttp's client, tuned
  as the gateway's (the gateway's own stack);
* ``uvicorn-lean``: the same server + the gateway's own HTTP/1.1 client
  (`sluicegate.gateway._http1`: asyncio protocol, httptools' response parser; a
  prototype of it before it went on the data path);
* ``lean-lean``: an asyncio protocol server with httptools' request parser + that
  client: the byte pump, the floor of a Python proxy that reads HTTP;
* ``splice``: each client connection joined to its own upstream connection, bytes passed
  both ways unread (no HTTP parsing at all): the floor of any Python relay, for a
  streamed chunk (one read, one write) as for a request;
* granian: ``granian --interface asgi sluicegate.bench._stacks:asgi_aiohttp`` (granian
  is not a dependency; install it in a separate virtualenv to measure).

Run one: ``python -c 'from sluicegate.bench._stacks import main; main()' --stack NAME
--port P --upstream U``; it prints ``listening`` when ready. The lean server handles
only what the load generator sends: it is a measurement, not a server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, Final, cast, final

import httptools

from ..gateway._client import Client
from ..gateway._http1 import Target

__all__ = ["asgi_aiohttp", "main"]

_UPSTREAM: Final = int(os.environ.get("SLUICEGATE_STACK_UPSTREAM", "0"))
_SKIP: Final = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})

Scope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


async def _lean_request(
    client: Client, base: str, method: bytes, path: bytes, headers: Headers, body: bytes
) -> tuple[int, Headers, bytes]:
    """One request on the gateway's own client (`gateway/_client.py`): the whole answer."""
    forwarded = [(n, v) for n, v in headers if n not in _SKIP]
    resp = await client.request(method.decode(), Target(base, path), data=body, headers=forwarded)
    try:
        data = await resp.read()
    except BaseException:
        resp.close()
        raise
    resp.release()
    return resp.status, resp.headers, data


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
    client, base = Client(), f"http://127.0.0.1:{port}"

    async def relay(scope: Scope, body: bytes) -> tuple[int, Headers, bytes]:
        method = scope["method"].encode()
        return await _lean_request(client, base, method, scope["raw_path"], scope["headers"], body)

    return relay


#: For granian: ``SLUICEGATE_STACK_UPSTREAM=PORT granian --interface asgi ...:asgi_aiohttp``.
asgi_aiohttp: Final = _asgi(_aiohttp_relay(_UPSTREAM))


@final
class _LeanServer(asyncio.Protocol):
    """HTTP/1.1 keep-alive server: parse with httptools, relay with the gateway's client."""

    def __init__(self, client: Client, base: str) -> None:
        self._client, self._base = client, base
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
        status, out, data = await _lean_request(
            self._client, self._base, method, url, headers, body
        )
        lines = [b"HTTP/1.1 %d OK\r\n" % status]
        for name, value in out:
            if name not in _SKIP:
                lines += (name, b": ", value, b"\r\n")
        lines.append(b"content-length: %d\r\n\r\n" % len(data))
        lines.append(data)
        assert self._transport is not None
        self._transport.write(b"".join(lines))


@final
class _Splice(asyncio.Protocol):
    """A client connection joined to an upstream connection of its own."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._peer: asyncio.Transport | None = None
        self._early: list[bytes] = []  # the client's bytes before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        front = cast("asyncio.Transport", transport)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_task(self._connect(loop, front))

    async def _connect(self, loop: asyncio.AbstractEventLoop, front: asyncio.Transport) -> None:
        try:
            peer, _ = await loop.create_connection(
                lambda: _SpliceBack(front), "127.0.0.1", self._upstream
            )
        except OSError:
            front.close()
            return
        if front.is_closing():  # the client left while the upstream connected
            peer.close()
            return
        self._peer = peer
        peer.writelines(self._early)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._peer is None:
            self._early.append(data)
        else:
            self._peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._peer.close()


@final
class _SpliceBack(asyncio.Protocol):
    """The upstream side of a splice: what arrives goes to the client as it is."""

    def __init__(self, front: asyncio.Transport) -> None:
        self._front = front

    def data_received(self, data: bytes) -> None:
        self._front.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.close()


def main() -> None:
    """Serve one stack on 127.0.0.1 (uvloop) until killed."""
    import uvloop

    parser = argparse.ArgumentParser(prog="stacks")
    parser.add_argument(
        "--stack", choices=["uvicorn-aiohttp", "uvicorn-lean", "lean-lean", "splice"]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()

    async def serve() -> None:
        if args.stack == "splice":
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _Splice(args.upstream), "127.0.0.1", args.port
            )
            print("listening", flush=True)  # noqa: T201 - the parent waits for this line
            await server.serve_forever()
        if args.stack == "lean-lean":
            client, base = Client(), f"http://127.0.0.1:{args.upstream}"
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _LeanServer(client, base), "127.0.0.1", args.port
            )
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
