"""Running simulator apps under uvicorn: in process for tests, or from the CLI.

The sockets are bound before `serve_in_background` yields (`sluicegate.asgi`), so port 0
works and clients may connect at once.

Shutdown order: close the apps first (every open stream ends at once), then let uvicorn
close listeners and idle keep-alive connections.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..asgi import listen, serving, url_of, uvicorn_server
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
            sock = listen(host, port)
            server = uvicorn_server(
                app,
                log_config=log_config,
                log_level="warning",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            )
            await stack.enter_async_context(serving(server, sock))
            stack.callback(app.close)  # runs before the shutdown above (LIFO)
            urls.append(url_of(sock))
        yield urls
