"""ASGI types, body reading, the lifespan handshake, listening and uvicorn setup.

uvicorn is driven through `Server.startup()` and `Server.shutdown()` (see `serving`),
never `serve()`: that one installs signal handlers (wrong inside a test or an embedding
program; the gateway's SIGTERM would be re-raised at exit) and runs a 100 ms tick loop
that nothing here needs. Sockets are bound and listening before uvicorn starts, so
port 0 works, the URL is known at once, and early clients queue in the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

    import uvicorn

__all__ = [
    "App",
    "BodyTooLarge",
    "ClientGone",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Served",
    "lifespan",
    "listen",
    "read_body",
    "run",
    "serving",
    "url_of",
    "uvicorn_server",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_T = TypeVar("_T")

#: Pending connections the kernel queues per listener: benchmarks open a thousand
#: streams at once, before the loop accepts the first.
BACKLOG: Final = 2048


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BodyTooLarge(Exception):
    """The request body is larger than the limit given to `read_body`.

    Attributes:
        limit: that limit, in bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body exceeds {limit} bytes")
        self.limit = limit


async def read_body(
    receive: Receive, limit: int = sys.maxsize, hold: Callable[[int], None] | None = None
) -> bytes | bytearray:
    """The whole request body.

    A body in several parts is gathered in one bytearray, which grows in place
    (realloc, mremap for large ones): joining a list would hold it twice at once. The
    size is checked as each part arrives, before it is kept.

    Args:
        receive: the ASGI receive callable.
        limit: the most bytes accepted.
        hold: called with the size of each non-empty part once it is accepted (to count
            the bytes held in memory); may raise to refuse the request.

    Raises:
        BodyTooLarge: the body is larger than `limit`.
        ClientGone: the client left first.
    """
    gathered = bytearray()
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        n = len(chunk)
        total += n
        if total > limit:
            raise BodyTooLarge(limit)
        if n and hold is not None:
            hold(n)
        if not message.get("more_body", False):
            if not gathered:
                return chunk  # the usual case: the body came in one part
            gathered += chunk
            return gathered
        gathered += chunk


async def lifespan(
    receive: Receive, send: Send, on_shutdown: Callable[[], None] | None = None
) -> None:
    """Answer the lifespan protocol (for ASGI servers other than ours, which turn it off:
    our apps are started and stopped by their owner). `on_shutdown` runs at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0 for any free port) and listening.

    Raises:
        OSError: the address cannot be bound; the message names it (the bare error
            does not, and with several replicas the port is not obvious).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL of a listening socket, e.g. ``http://127.0.0.1:41234``."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(
    app: App,
    *,
    http: type[asyncio.Protocol] | str = "httptools",
    log_config: dict[str, Any] | None = None,
    log_level: str | None = None,
    timeout_graceful_shutdown: int | None = None,
    timeout_keep_alive: int = 5,
) -> uvicorn.Server:
    """A uvicorn server for `app`, ready for `serving`.

    Always: no lifespan (the app's owner starts and stops it), no websockets, no access
    log, no X-Forwarded-* rewriting (a middleware call per request on the hot path), no
    ``server`` or ``date`` header of uvicorn's (its tick loop, which `serving` does not
    run, would add them; a proxy relays upstream's and must not add twins).

    Args:
        app: the ASGI app.
        http: the HTTP protocol: ``"httptools"`` or a protocol class (the gateway's
            guarded one).
        log_config: uvicorn's logging dictConfig; None leaves logging alone.
        log_level: uvicorn's log level; None leaves it alone.
        timeout_graceful_shutdown: seconds open responses get at shutdown; None = all
            they need.
        timeout_keep_alive: seconds an idle keep-alive connection is kept.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        http=http,
        ws="none",
        lifespan="off",
        loop="none",  # the running loop serves; `run` picks uvloop
        log_config=log_config,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        timeout_keep_alive=timeout_keep_alive,
    )
    config.load()
    server = uvicorn.Server(config)
    # serve() would set this before startup(); `serving` calls startup() itself.
    server.lifespan = config.lifespan_class(config)
    return server


class Served(Protocol):
    """A server `serving` drives: uvicorn's `Server`, or our `HttpServer`."""

    async def startup(self, sockets: list[socket.socket]) -> None: ...

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None: ...


@contextlib.asynccontextmanager
async def serving(server: Served, sock: socket.socket) -> AsyncIterator[None]:
    """Serve on `sock` for the duration of the block; then stop accepting, close idle
    connections, wait for open responses (up to the graceful-shutdown timeout) and close
    `sock`. Code that must end open responses first (drain, close) runs at the end of
    the block."""
    try:
        await server.startup(sockets=[sock])
        try:
            yield
        finally:
            await server.shutdown(sockets=[sock])
    finally:
        sock.close()


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on uvloop, the servers' loop, where there is one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - no uvloop on Windows
        return asyncio.run(main)
    return uvloop.run(main)
