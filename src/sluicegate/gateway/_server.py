"""Running the gateway: in the background (tests, embedding) or as a process with signal
handling (SIGTERM/SIGINT drain, SIGHUP and file-change reload).

Listening and the servers are the shared `sluicegate.asgi` toolkit's: the built-in
`HttpServer` by default, or uvicorn with the gateway's guarded protocol (`_protocol`,
``server.http: uvicorn``), both with the same limits against hostile clients.

Shutdown order on SIGTERM: readiness turns 503 and every queued request gets 503 (the
controllers close), then the server stops accepting and waits up to `drain_grace` for
in-flight responses, then the gateway stops its scrapes and session. The process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import asgi
from ._app import Gateway
from ._auth import check_exposure
from ._protocol import guarded_protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._config import GatewayConfig

__all__ = ["run", "serve", "serve_in_background"]

_log = logging.getLogger("sluicegate.gateway")


def default_max_connections() -> int:
    """Half the process's file-descriptor limit: each client connection being served
    also needs an upstream connection, and scrapes, logs and the listener need some."""
    if sys.platform == "win32":  # pragma: no cover - no resource module
        return 4096
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft // 2, 16) if soft != resource.RLIM_INFINITY else 1 << 20


def _raise_fd_limit() -> None:
    """Use the hard file-descriptor limit (a soft 1,024 is a common default that a
    busy gateway exhausts); the connection cap follows it."""
    if sys.platform == "win32":  # pragma: no cover
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _http_server(gateway: Gateway) -> asgi.Served:
    """The client-facing server `server.http` names, with the configured limits."""
    settings = gateway.config.server
    limits = asgi.Limits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        max_connections=settings.max_connections or default_max_connections(),
    )
    if settings.http == "builtin":
        return asgi.HttpServer(gateway, limits, graceful_timeout=settings.drain_grace)
    return asgi.uvicorn_server(
        gateway,
        http=guarded_protocol(limits),
        timeout_graceful_shutdown=max(round(settings.drain_grace), 0) or None,
        timeout_keep_alive=max(math.ceil(settings.keep_alive_timeout), 1),
    )


@contextlib.asynccontextmanager
async def serve_in_background(
    config: GatewayConfig, *, host: str | None = None, port: int | None = None
) -> AsyncIterator[Gateway]:
    """Run a gateway on the current loop; yields it with `url` set. Stops on exit.

    Args:
        config: the configuration.
        host: overrides ``server.host``.
        port: overrides ``server.port`` (0 picks a free port).
    """
    host = host or config.server.host
    check_exposure(host, config.server.auth_token)
    sock = asgi.listen(host, config.server.port if port is None else port)
    async with Gateway(config) as gateway:
        gateway.url = asgi.url_of(sock)
        async with asgi.serving(_http_server(gateway), sock):
            try:
                yield gateway
            finally:
                await gateway.drain()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # being replaced; the next event brings the new file


def _absolute(path: Path) -> Path:
    # Not resolve(): a symlinked config must be read through its link each time.
    return Path(os.path.abspath(path))


def _watch_filter(path: Path) -> Callable[[Any, str], bool]:
    """Accept only events that can change what `path` reads: the file itself (also when
    replaced by rename) and a symlink it is reached through (Kubernetes swaps a
    ``..data`` link). Everything else in the directory, a log file say, is dropped
    before watchfiles even logs it."""
    name = path.name

    def accept(_: Any, changed: str) -> bool:
        entry = Path(changed)
        return entry.name == name or (entry.name.startswith("..") and entry.is_symlink())

    return accept


async def _watch_file(gateway: Gateway, path: Path) -> None:
    """Reload when the config file changes (inotify through watchfiles; no polling here).

    One watch on the file's directory, not recursive: a watch on the file itself would
    be lost when an editor replaces it by rename, and a recursive one costs a watch per
    subdirectory (thousands in a temp folder).

    Args:
        gateway: the gateway to reload.
        path: the configuration file, as given (a symlink stays one).
    """
    import watchfiles

    path = _absolute(path)
    last = _read(path)
    async for _ in watchfiles.awatch(
        path.parent, watch_filter=_watch_filter(path), recursive=False, debounce=400, step=50
    ):
        content = _read(path)
        if content is not None and content != last:
            last = content
            gateway.reload_from_file()


def _watch(
    gateway: Gateway, config: GatewayConfig, config_path: Path | None
) -> list[asyncio.Task[None]]:
    """Watch the config file, and the keys file it names, for changes."""
    if config_path is None:
        return []
    loop = asyncio.get_running_loop()
    watchers = [loop.create_task(_watch_file(gateway, config_path))]
    if config.auth.keys_file is not None:
        keys = Path(config.auth.keys_file)
        watchers.append(loop.create_task(_watch_file(gateway, keys)))
    return watchers


async def serve(
    config: GatewayConfig, *, config_path: Path | None = None, watch: bool = True
) -> None:
    """Serve until SIGTERM or SIGINT, then drain. Meant for a process's main coroutine."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    check_exposure(config.server.host, config.server.auth_token)
    sock = asgi.listen(config.server.host, config.server.port)
    async with Gateway(config, config_path=config_path) as gateway:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload_from_file)
        watchers: list[asyncio.Task[None]] = []
        try:
            async with asgi.serving(_http_server(gateway), sock):
                watchers = _watch(gateway, config, config_path if watch else None)
                gateway.url = asgi.url_of(sock)
                print(f"sluicegate gateway listening on {gateway.url}", flush=True)  # noqa: T201
                await stop.wait()
                _log.info("stopping: draining queued requests, waiting for in-flight ones")
                await gateway.drain()
        finally:
            for watcher in watchers:
                watcher.cancel()
            if watchers:
                await asyncio.wait(watchers)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def run(config: GatewayConfig, *, config_path: Path | None = None) -> None:
    """Serve in this process on uvloop (when available) until SIGTERM/SIGINT."""
    _raise_fd_limit()
    asgi.run(serve(config, config_path=config_path))
