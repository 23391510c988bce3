"""Running simulator apps under uvicorn: in process for tests, or from the CLI.

We bind the listening sockets ourselves, so port 0 works and the URL is known before
`serve_in_background` yields: the kernel queues connections on a listening socket, so
clients may connect at once. uvicorn's `startup()`/`shutdown()` are driven directly rather
than through `serve()`, which would install signal handlers (wrong inside a test) and
could only report readiness through a flag we would have to poll.

Shutdown order: close the apps first (every open stream ends at once), then let uvicorn
close listeners and idle keep-alive connections.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

import uvicorn

from ._app import SimApp, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ._config import SimConfig

__all__ = ["serve_in_background", "serve_many"]

#: Seconds uvicorn waits for open responses at shutdown; the apps are closed first, so
#: only a slow client can take that long.
_GRACEFUL_SHUTDOWN_S = 2


@contextlib.asynccontextmanager
async def serve_in_background(
    app: SimConfig | SimApp, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve one simulator on the running loop for the duration of the block.

    Args:
        app: A `SimConfig` (a fresh app is built) or an app from `create_app`.
        host: Address to bind; keep it on loopback in tests.
        port: Port to bind; 0 picks a free one.

    Yields:
        The base URL, e.g. `http://127.0.0.1:41234` (append `/v1` for the openai client).

    Raises:
        OSError: The address cannot be bound.
    """
    apps = [app if isinstance(app, SimApp) else create_app(app)]
    async with serve_many(apps, host, [port], log_config=None) as urls:
        yield urls[0]


@contextlib.asynccontextmanager
async def serve_many(
    apps: Sequence[SimApp],
    host: str,
    ports: Sequence[int],
    *,
    log_config: dict[str, Any] | None = None,
) -> AsyncIterator[list[str]]:
    """Serve each app on its port (0 for any free one) until the block exits.

    Args:
        apps: The apps, one per port.
        host: Address to bind.
        ports: One port per app.
        log_config: uvicorn's logging dictConfig; None leaves logging alone.

    Yields:
        The base URLs, in the order of `apps`.
    """
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for app, port in zip(apps, ports, strict=True):
            sock = _bind(host, port)
            stack.callback(sock.close)
            server = _server(app, log_config)
            await server.startup(sockets=[sock])
            stack.push_async_callback(server.shutdown, [sock])
            stack.callback(app.close)  # runs before the shutdown above (LIFO)
            bound_port = sock.getsockname()[1]
            urls.append(f"http://{_url_host(host)}:{bound_port}")
        yield urls


def _server(app: SimApp, log_config: dict[str, Any] | None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        http="httptools",
        ws="none",
        lifespan="off",  # the context manager owns the app's life
        log_config=log_config,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # loopback only; saves a middleware call per request
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    config.load()
    server = uvicorn.Server(config)
    # Server.serve() sets this before startup(); we call startup() ourselves.
    server.lifespan = config.lifespan_class(config)
    return server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # benchmarks open a thousand streams at once
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        # The bare error names no address; with --replicas the port is not obvious.
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
