"""The gateway: a raw ASGI application in front of pools of model servers.

No framework routing on the hot path: one dict lookup picks the handler. Per request,
the gateway reads the body, parses it once with orjson for ``model`` and ``stream``,
classifies the headers, waits in its pool's flow controller, and relays to the backend
the controller's detector bound it to. Whatever happens, the ticket is released
(``finally``) and the client gets an answer or a closed connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import orjson

import sluicegate as sg

from ._classify import classify
from ._config import GatewayConfigError, UtilizationSettings, load_config
from ._errors import GatewayError
from ._introspect import debug_document, merged_models, readiness, require_token
from ._metrics import GatewayMetrics
from ._pool import Pool, Router
from ._proxy import ClientGone, Exchange, relay
from ._tokens import UsageMeter, estimate_input_tokens, estimate_output_tokens, tokenize

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from pathlib import Path
    from types import TracebackType

    from ._config import GatewayConfig

__all__ = ["Gateway"]

_log = logging.getLogger("sluicegate.gateway")

_INFERENCE: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_DISPATCHED: Final = sg.Outcome.DISPATCHED.value


@final
@dataclass(frozen=True, slots=True)
class _State:
    """What a request reads from the configuration; swapped whole on reload."""

    config: GatewayConfig
    router: Router
    objectives: Mapping[str, int]


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    return doc


@final
class Gateway:
    """The OpenAI-compatible flow-control gateway, as an ASGI application.

    Use it as an async context manager: entering starts the pools' controllers, the
    metrics scrapes and the upstream session; leaving stops them. Serve it with
    `serve_in_background` or `sluicegate serve`.

    Args:
        config: the validated configuration.
        config_path: the file it came from, for `reload_from_file`.
    """

    def __init__(self, config: GatewayConfig, *, config_path: str | Path | None = None) -> None:
        self.config_path = config_path
        self.draining = False
        #: The base URL it is served on, once served (`serve_in_background`, `serve`).
        self.url: str | None = None
        self._config = config
        self._pools: dict[str, Pool] = {}
        self._state: _State | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stack: AsyncExitStack | None = None
        self.metrics = GatewayMetrics(config.metrics, lambda: self._pools.values())

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force."""
        return self._config

    @property
    def pools(self) -> Mapping[str, Pool]:
        """The pools by name."""
        return self._pools

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        loop = asyncio.get_running_loop()
        server = self._config.server
        async with AsyncExitStack() as stack:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=server.connect_timeout, sock_read=server.read_timeout
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # Forward the client's headers only; aiohttp's defaults would, e.g., ask
                # for gzip the client never asked for.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            stack.push_async_callback(session.close)
            fc = self._config.flow_control.build()
            for settings in self._config.pools:
                pool = Pool(settings, fc, loop.time)
                self._pools[pool.name] = pool
                await stack.enter_async_context(pool.controller)
                pool.controller.reconcile_priorities(self._config.priorities)
                pool.start_scraping(session)
                stack.push_async_callback(pool.stop_scraping)
            self._session = session
            self._state = self._new_state(self._config)
            _warn_about(self._config)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop everything: queued requests get 503; scrapes and the session stop."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def drain(self) -> None:
        """Begin a graceful stop: refuse new work and evict everything queued (503).

        Requests in flight continue; the server decides how long to wait for them.
        """
        self.draining = True
        for pool in self._pools.values():
            await pool.controller.aclose()

    def _new_state(self, config: GatewayConfig) -> _State:
        pools = [self._pools[p.name] for p in config.pools]
        objectives = {o.name: o.priority for o in config.objectives}
        return _State(config, Router(pools), objectives)

    # -- reload ---------------------------------------------------------------------------

    def reload(self, config: GatewayConfig) -> None:
        """Adopt `config` without dropping queued or in-flight requests.

        Everything is validated before anything changes. Objectives, bands, limits,
        thresholds, models and backends change live; the pool set, a pool's saturation
        type, the listening address and the metrics naming need a restart.

        Raises:
            GatewayConfigError: `config` cannot be applied live; nothing changed.
        """
        names = {p.name for p in config.pools}
        if names != set(self._pools):
            raise GatewayConfigError(
                f"pools: adding or removing pools needs a restart "
                f"(running {sorted(self._pools)}, new {sorted(names)})"
            )
        for settings in config.pools:
            self._pools[settings.name].check(settings)
        fc = config.flow_control.build()
        for settings in config.pools:
            self._pools[settings.name].apply(settings, fc, config.priorities)
        old = self._config
        for section in ("host", "port", "connect_timeout", "read_timeout", "drain_grace"):
            if getattr(old.server, section) != getattr(config.server, section):
                _log.warning("config reload: server.%s changes only on restart", section)
        if old.metrics != config.metrics:
            _log.warning("config reload: the metrics section changes only on restart")
        self._config = config
        self._state = self._new_state(config)
        _warn_about(config)

    def reload_from_file(self) -> bool:
        """Reload `config_path`; an invalid file is refused and logged. Returns success."""
        if self.config_path is None:
            _log.warning("config reload requested, but the gateway was not started from a file")
            return False
        try:
            self.reload(load_config(self.config_path))
        except GatewayConfigError as exc:
            _log.error("config reload refused; the running config stays. %s", exc)
            return False
        _log.info("config reloaded from %s", self.config_path)
        return True

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        ex = Exchange(scope, receive, send)
        try:
            await self._route(ex)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if ex.disconnected and task is not None and task.uncancel() == 0:
                self._client_left(ex)
                return
            raise
        except ClientGone:
            return
        except Exception as exc:
            await self._fail(ex, exc)
        finally:
            ex.close()

    async def _route(self, ex: Exchange) -> None:
        state = self._state
        if state is None:
            raise sg.ControllerClosedError("the gateway is not running")
        path: str = ex.scope["path"]
        method: str = ex.scope["method"]
        if path in _INFERENCE and method == "POST":
            await self._inference(ex, state)
        elif path == "/v1/models" and method == "GET":
            doc = await merged_models(self._require_session(), self._pools.values(), ex.scope)
            await ex.respond(200, orjson.dumps(doc), b"application/json")
        elif path.startswith("/v1/"):
            await self._passthrough(ex, state)
        elif path == "/healthz":
            await ex.respond(200, b'{"status":"ok"}', b"application/json")
        elif path == "/readyz":
            problems = readiness(self)
            body = orjson.dumps({"ready": not problems, "problems": problems})
            await ex.respond(503 if problems else 200, body, b"application/json")
        elif path == "/metrics":
            require_token(ex.scope, state.config.server.auth_token)
            await ex.respond(
                200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8"
            )
        elif path == "/debug/flowcontrol":
            require_token(ex.scope, state.config.server.auth_token)
            body = orjson.dumps(debug_document(self), option=orjson.OPT_NON_STR_KEYS)
            await ex.respond(200, body, b"application/json")
        else:
            raise GatewayError(404, f"no route for {method} {path}", code="not_found")

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise sg.ControllerClosedError("the gateway is not running")
        return self._session

    async def _inference(self, ex: Exchange, state: _State) -> None:
        body = await ex.read_body(state.config.server.max_body_bytes)
        doc = _parse(body)
        ex.pool = pool = state.router.route(doc.get("model"))
        cls = classify(ex.scope["headers"], state.objectives, state.config.server.max_ttl)
        ex.classification = cls
        key = sg.FlowKey(cls.fairness_id, cls.priority)
        ctl = pool.controller
        ex.watch_disconnect()
        input_tokens, output_tokens = await self._estimate(ex, pool, doc)
        ex.queued, ex.enqueued_at = True, time.perf_counter()
        if not pool.has_free_slot():
            # It would wait for a slot: take one back from lower-priority work whose
            # answer has not started (its slot comes free before this request waits).
            pool.preemption.make_room(cls.priority)
        # enqueue_and_wait dispatches at once, without waiting, when nothing is queued.
        ticket = await ctl.enqueue_and_wait(
            key,
            size=len(body),
            ttl=cls.ttl,
            slo=cls.slo,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        ex.queued = False
        meter = UsageMeter(ticket, pool.observe(ticket))
        try:
            ex.queue_s = ticket.queue_time or 0.0
            ex.outcome = _DISPATCHED
            pool.dispatched(ticket.priority, ticket.dispatched_at or 0.0)
            self.metrics.record(cls.fairness_id, ticket.priority, _DISPATCHED, ex.queue_s)
            stream = doc.get("stream") is True
            session = self._require_session()
            if pool.settings.forward_priority and "priority" not in doc:
                # vLLM serves the lowest value first; ours is the highest first.
                body = orjson.dumps(doc | {"priority": -cls.priority})
            while True:
                assignment = ticket.assignment
                if assignment is None:  # the detector had no backend: only if it misbehaves
                    raise sg.NoEndpointsError(f"pool {pool.name} has no backend for the request")
                with pool.preemption.track(ticket, ex, stream=stream):
                    try:
                        await relay(
                            session, ex, assignment[0].url, body, stream=stream, meter=meter
                        )
                        break
                    except asyncio.CancelledError:
                        if not pool.preemption.absorb(ex):
                            raise
                # Taken back before its answer started (see _preempt.py): wait again.
                meter.abandon()
                ticket = await pool.preemption.wait_again(ticket)
                meter = UsageMeter(ticket, pool.observe(ticket))
        except Exception:
            if not ex.started:
                meter.failed()
            raise
        finally:
            # Usage first, so the release teaches the flow's output average the truth.
            meter.close()
            began = time.perf_counter()
            ticket.release()
            self.metrics.dispatch_cycle.observe(time.perf_counter() - began)
            self.metrics.tokens(cls.fairness_id, ticket.priority, ticket)
        if ex.first_byte_at:
            added = ex.first_byte_at - ex.arrived - ex.queue_s - ex.upstream_s
            self.metrics.added_latency.observe(max(added, 0.0))

    async def _estimate(
        self, ex: Exchange, pool: Pool, doc: dict[str, Any]
    ) -> tuple[int | None, int | None]:
        """Estimated (input, output) tokens, charged at dispatch and corrected later."""
        if ex.scope["path"] == "/v1/embeddings":
            output_tokens: int | None = 0  # embeddings generate nothing
        else:
            output_tokens = estimate_output_tokens(doc)
        if pool.settings.token_estimate == "tokenize":
            backend = pool.detector.least_loaded()
            if backend is not None:
                auth = {
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in ex.scope["headers"]
                    if k == b"authorization"
                }
                counted = await tokenize(self._require_session(), backend.url, doc, auth)
                if counted is not None:
                    return counted, output_tokens
        return estimate_input_tokens(doc), output_tokens

    async def _passthrough(self, ex: Exchange, state: _State) -> None:
        """Other /v1/* routes: relayed to the least-loaded backend, without flow control."""
        body = await ex.read_body(state.config.server.max_body_bytes)
        model: object = None
        stream = False
        if body[:1] == b"{":
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                model, stream = doc.get("model"), doc.get("stream") is True
        try:
            pool = state.router.route(model)
        except GatewayError:
            if model is not None:
                raise
            pool = self._pools[state.config.pools[0].name]
        backend = pool.detector.least_loaded()
        if backend is None:
            raise sg.NoEndpointsError(f"pool {pool.name} has no reachable backend")
        ex.watch_disconnect()
        await relay(self._require_session(), ex, backend.url, body, stream=stream)

    # -- outcomes -----------------------------------------------------------------------------

    async def _fail(self, ex: Exchange, exc: Exception) -> None:
        """Answer an error: the single place where failures become responses."""
        retry_after: int | None = None
        if isinstance(exc, sg.FlowControlError) and ex.outcome != _DISPATCHED:
            ex.queue_s = time.perf_counter() - ex.enqueued_at if ex.enqueued_at else 0.0
            ex.queued = False
            self._record(ex, exc.outcome.value, reason=str(exc), status=exc.status_hint)
            if exc.status_hint == 429 and ex.pool is not None and ex.classification is not None:
                retry_after = ex.pool.retry_after(ex.classification.priority)
        elif not isinstance(exc, GatewayError | sg.FlowControlError):
            _log.exception("unexpected error on %s %s", ex.scope["method"], ex.scope["path"])
        if ex.started:
            _log.warning("error after the response started, connection closed: %r", exc)
            return
        await ex.respond_error(exc, retry_after=retry_after)

    def _client_left(self, ex: Exchange) -> None:
        if ex.queued:
            ex.queue_s = time.perf_counter() - ex.enqueued_at
            self._record(
                ex, sg.Outcome.EVICTED_CANCELLED.value, reason="client disconnected", status=0
            )

    def _record(self, ex: Exchange, outcome: str, *, reason: str, status: int) -> None:
        cls = ex.classification
        if cls is None:
            return
        self.metrics.record(cls.fairness_id, cls.priority, outcome, ex.queue_s)
        _log.info(
            "flow-control outcome=%s pool=%s flow=%s priority=%d objective=%s status=%d "
            "queue_ms=%.1f reason=%r",
            outcome,
            ex.pool.name if ex.pool is not None else "-",
            cls.fairness_id,
            cls.priority,
            cls.objective or "-",
            status,
            ex.queue_s * 1000.0,
            reason,
        )


def _warn_about(config: GatewayConfig) -> None:
    for pool in config.pools:
        sat = pool.saturation
        if isinstance(sat, UtilizationSettings) and sat.scrape_interval >= sat.staleness:
            _log.warning(
                "pool %s: scrape_interval (%s s) >= staleness (%s s): metrics will be stale "
                "between scrapes and stale_policy=%s will apply",
                pool.name,
                sat.scrape_interval,
                sat.staleness,
                sat.stale_policy,
            )


async def _lifespan(
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    # The gateway is started by its owner (`async with Gateway(...)`), not by the ASGI
    # server, so lifespan events are only acknowledged.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
