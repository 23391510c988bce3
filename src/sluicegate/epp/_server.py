"""Serving the endpoint picker: the ext_proc and health gRPC services, and an HTTP port
for /metrics, /debug/flowcontrol, /healthz and /readyz.

Shutdown on SIGTERM, as the HTTP gateway: the health service turns NOT_SERVING, every
queued request is answered 503 through an ImmediateResponse (the controllers close),
then the gRPC server stops accepting and waits up to ``server.drain_grace`` for open
streams (requests in flight) to end, then scrapes stop. SIGHUP, or a change of the
config file or of the objectives directory, reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import orjson
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from grpc_health.v1 import health_pb2

from .. import asgi
from ._grpc import GrpcError, GrpcServer, GrpcStream, Method, Status
from ._picker import EndpointPicker
from ._protocol import FULL_DUPLEX
from ._stream import Lifecycle

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import GatewayConfig

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "RunningPicker",
    "run",
    "serve_in_background",
]

_log = logging.getLogger("sluicegate.epp")

DEFAULT_GRPC_PORT: Final = 9002
DEFAULT_METRICS_PORT: Final = 9090
EXT_PROC_SERVICE: Final = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICE: Final = "grpc.health.v1.Health"


def _processor(picker: EndpointPicker) -> Method:
    """The ext_proc method: one `Lifecycle` per stream, released whatever happens."""

    async def process(stream: GrpcStream) -> None:
        life = Lifecycle(picker)
        picker.streams += 1
        try:
            while (request := await stream.read()) is not None:
                for reply in await life.handle(request):
                    stream.send(reply)
                if life.decided:
                    life.observe()
                if life.done:
                    break
            # An immediate response went out (a rejection). Envoy stops sending and
            # half-closes or resets the stream; what it sent meanwhile is dropped here.
            # Ending the call first would race a client still streaming the body:
            # grpcio's client then fails its next write (INTERNAL) instead of reading.
            while await stream.read() is not None:
                pass
        finally:
            # Stream ended, failed or was reset (Envoy or the client gone): the slot
            # comes back here if the response's end_of_stream did not bring it back.
            picker.streams -= 1
            life.close()

    return Method(process, ext.ProcessingRequest)


@final
class Health:
    """``grpc.health.v1.Health/Check`` (what Envoy's and Kubernetes' gRPC probes call).

    ``Watch`` is not served (UNIMPLEMENTED): neither prober uses it.
    """

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}

    def set(self, service: str, status: int) -> None:
        self.statuses[service] = status

    async def check(self, stream: GrpcStream) -> None:
        request = await stream.read()
        if request is None:
            raise GrpcError(Status.INVALID_ARGUMENT, "no HealthCheckRequest")
        status = self.statuses.get(request.service)
        if status is None:
            raise GrpcError(Status.NOT_FOUND, f"unknown service {request.service!r}")
        stream.send(health_pb2.HealthCheckResponse(status=status))

    def method(self) -> Method:
        return Method(self.check, health_pb2.HealthCheckRequest)


@final
class RunningPicker:
    """A served picker: its gRPC address and its HTTP (metrics) base URL."""

    def __init__(
        self, picker: EndpointPicker, grpc_target: str, metrics_url: str, health: Health
    ) -> None:
        self.picker = picker
        self.grpc_target = grpc_target
        self.metrics_url = metrics_url
        self.health = health

    async def drain(self) -> None:
        """Health NOT_SERVING, then every queued request answered 503; open streams go on."""
        _set_health(self.health, False)
        await self.picker.drain()


def _ops_app(picker: EndpointPicker) -> web.Application:
    token = picker.config.server.auth_token

    def authorized(request: web.Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {token}".encode())

    async def metrics(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.Response(
            body=picker.gateway.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def debug(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = orjson.dumps(picker.debug_document(), option=orjson.OPT_NON_STR_KEYS)
        return web.Response(body=body, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = picker.readiness()
        return web.json_response(
            {"ready": not problems, "problems": problems}, status=503 if problems else 200
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/flowcontrol", debug)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _set_health(health: Health, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", EXT_PROC_SERVICE):
        health.set(service, status)


@contextlib.asynccontextmanager
async def serve_in_background(
    config: GatewayConfig,
    *,
    host: str | None = None,
    grpc_port: int = 0,
    metrics_port: int = 0,
    config_path: str | Path | None = None,
    objectives_dir: str | Path | None = None,
    body_mode: int = FULL_DUPLEX,
) -> AsyncIterator[RunningPicker]:
    """Run a picker on the current loop (ports 0 pick free ones); drains on exit."""
    host = host or config.server.host
    picker = EndpointPicker(
        config, config_path=config_path, objectives_dir=objectives_dir, body_mode=body_mode
    )
    async with picker:
        # Buffered mode sends a whole body in one message: allow max_body_bytes (gRPC's
        # default limit is 4 MiB), plus room for the headers; larger bodies get our 413.
        limit = config.server.max_body_bytes + 1024 * 1024
        health = Health()
        methods = {
            f"/{EXT_PROC_SERVICE}/Process": _processor(picker),
            f"/{HEALTH_SERVICE}/Check": health.method(),
        }
        server = GrpcServer(methods, max_message_bytes=limit)
        port = await server.start(host, grpc_port)
        runner = web.AppRunner(_ops_app(picker), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, metrics_port)
        try:
            await site.start()
            bound = runner.addresses[0][1]
            _set_health(health, True)
            running = RunningPicker(
                picker, f"{_bracket(host)}:{port}", f"http://{_bracket(host)}:{bound}", health
            )
            yield running
        finally:
            _set_health(health, False)
            await picker.drain()
            # Open streams (requests in flight) get up to drain_grace to end.
            await server.stop(config.server.drain_grace)
            await runner.cleanup()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _resolved(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None


def _read(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None  # being replaced; the next event brings the new file


async def _watch(running: RunningPicker, config_path: Path | None, objectives: Path | None) -> None:
    """Reload on changes of the config file or the objectives directory (inotify).

    Any change in the config file's directory re-reads the file and reloads if its
    content changed: editors and Kubernetes ConfigMap volumes replace files by renames
    and symlink swaps, which a watch on the file itself would miss.
    """
    import watchfiles

    config_dir = _resolved(config_path.parent) if config_path is not None else None
    objectives_dir = _resolved(objectives)
    last = _read(config_path)
    paths = [p for p in (config_dir, objectives_dir) if p is not None]
    async for changes in watchfiles.awatch(*paths, debounce=400, step=50):
        touched = [Path(p) for _, p in changes]
        if config_dir is not None and any(config_dir in p.parents for p in touched):
            content = _read(config_path)
            if content is not None and content != last:
                last = content
                running.picker.reload_from_file()
        if objectives_dir is not None and any(objectives_dir in p.parents for p in touched):
            running.picker.reload_objectives()


async def serve(
    config: GatewayConfig,
    *,
    host: str | None,
    grpc_port: int,
    metrics_port: int,
    config_path: Path | None,
    objectives_dir: Path | None,
    body_mode: int = FULL_DUPLEX,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain. Meant for a process's main coroutine."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with serve_in_background(
        config,
        host=host,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        config_path=config_path,
        objectives_dir=objectives_dir,
        body_mode=body_mode,
    ) as running:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reload_all, running.picker)
        watcher = None
        if config_path is not None or objectives_dir is not None:
            watcher = loop.create_task(_watch(running, config_path, objectives_dir))
        print(  # noqa: T201
            f"sluicegate epp listening on grpc {running.grpc_target}, "
            f"metrics {running.metrics_url}",
            flush=True,
        )
        try:
            await stop.wait()
            _log.info("stopping: answering queued requests 503, waiting for open streams")
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait({watcher})
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def _reload_all(picker: EndpointPicker) -> None:
    picker.reload_from_file()
    picker.reload_objectives()


def run(config: GatewayConfig, **options: Any) -> None:
    """Serve in this process on uvloop (when available) until SIGTERM/SIGINT."""
    asgi.run(serve(config, **options))
