"""The gateway: a raw ASGI application in front of pools of model servers.

No framework routing on the hot path: one dict lookup picks the handler. Per request,
the gateway reads the body, parses it once with orjson for ``model`` and ``stream``,
classifies the headers, waits in its pool's flow controller, and relays to the backend
the controller's detector bound it to. Whatever happens, the ticket is released
(``finally``) and the client gets an answer or a closed connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import orjson

import sluicegate as sg

from ..asgi import ClientGone, Receive, Scope, Send, lifespan
from ._auth import Auth
from ._client import Client
from ._config import GatewayConfigError, UtilizationSettings, load_config
from ._errors import GatewayError
from ._health import relay_with_retry
from ._introspect import debug_document, merged_models, readiness, require_token
from ._metrics import GatewayMetrics
from ._pause import Resumable
from ._pool import Pool, Router, body_claim
from ._proxy import BodyBudget, Exchange, relay
from ._queue_events import QueueEvents
from ._record import RequestRecord
from ._record import now as record_clock
from ._tokens import UsageMeter, estimate_input_tokens, estimate_output_tokens, tokenize
from ._upstream import sse_error_event

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import TracebackType

    from ._config import GatewayConfig

__all__ = ["Gateway"]

_log = logging.getLogger("sluicegate.gateway")

#: Routes under flow control: the inference routes vLLM serves with a JSON body.
INFERENCE_ROUTES: Final = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank",
)  # fmt: skip
#: Inference routes that generate no tokens (their output estimate is 0).
_NO_OUTPUT: Final = frozenset(INFERENCE_ROUTES[4:]) | {"/v1/embeddings"}
#: vLLM utility routes relayed to a backend without flow control (cheap, no generation).
PASSTHROUGH_ROUTES: Final = ("/tokenize", "/detokenize")
_DISPATCHED: Final = sg.Outcome.DISPATCHED
#: Server settings read once at start (the listening socket, the upstream session and
#: the connection protocol hold them).
_RESTART_ONLY: Final = (
    "host", "port", "connect_timeout", "read_timeout", "drain_grace", "max_header_bytes",
    "header_timeout", "body_timeout", "keep_alive_timeout", "max_connections",
)  # fmt: skip
_JSON: Final = b"application/json"

_Handler = Callable[[Exchange, "_State"], Awaitable[None]]


@final
@dataclass(frozen=True, slots=True)
class _State:
    """What a request reads from the configuration; swapped whole on reload."""

    config: GatewayConfig
    router: Router
    objectives: Mapping[str, int]
    auth: Auth


def parse_body(body: bytes | bytearray) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 (also the endpoint picker's)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    return doc


def _upstream_body(
    doc: dict[str, Any], body: bytes | bytearray, pool: Pool, priority: int, path: str
) -> tuple[bytes | bytearray, Resumable | None]:
    """The body to send upstream, and the request's `Resumable` when it may be paused."""
    if pool.settings.forward_priority and "priority" not in doc:
        # vLLM serves the lowest value first; ours is the highest first.
        doc["priority"] = -priority
        body = orjson.dumps(doc)
    # A request that may be paused is relayed segment by segment (see _pause.py).
    res = Resumable.of(doc, path, priority, pool.preemption.pause_policy)
    if res is not None:
        body = res.first_body(doc)
    return body, res


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
        self._client: Client | None = None
        self._stack: AsyncExitStack | None = None
        self.metrics = GatewayMetrics(config.metrics, lambda: self._pools.values())
        #: Streamed requests waiting with ``x-sluicegate-queue-events: 1``.
        self.queue_events = QueueEvents()
        self.metrics.watch_queue_events(self.queue_events)
        self._bodies = BodyBudget(config.server.body_memory_budget)
        self._routes = self._route_table()
        self._paths = frozenset(path for _, path in self._routes)

    def _route_table(self) -> dict[tuple[str, bytes], _Handler]:
        """(method, raw path) -> handler. Only these exact paths are served: no prefix,
        no normalisation, so nothing reaches a backend except what is named here."""
        routes: dict[tuple[str, bytes], _Handler] = {
            ("GET", b"/v1/models"): self._models,
            ("GET", b"/health"): self._health,
            ("GET", b"/healthz"): self._healthz,
            ("GET", b"/readyz"): self._readyz,
            ("GET", b"/version"): self._version,
            ("GET", b"/metrics"): self._metrics,
            ("GET", b"/debug/flowcontrol"): self._debug,
        }
        for path in INFERENCE_ROUTES:
            routes["POST", path.encode()] = self._inference
        for path in PASSTHROUGH_ROUTES:
            routes["POST", path.encode()] = self._passthrough
        return routes

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
            # The data path has its own lean client (issue 17); aiohttp's session stays
            # for probes, scrapes, /v1/models and tokenize.
            client = Client(
                connect_timeout=server.connect_timeout, read_timeout=server.read_timeout
            )
            stack.push_async_callback(client.close)
            auth = self._auth(self._config, None)
            flow_control = auth.flow_control(self._config.flow_control)
            for settings in self._config.pools:
                pool = Pool(settings, flow_control, loop.time)
                self._pools[pool.name] = pool
                await stack.enter_async_context(pool.controller)
                pool.controller.reconcile_priorities(self._config.priorities)
                pool.start_scraping(session)
                stack.push_async_callback(pool.stop_scraping)
            self._session = session
            self._client = client
            self._state = self._new_state(self._config, auth)
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

    def _new_state(self, config: GatewayConfig, auth: Auth) -> _State:
        pools = [self._pools[p.name] for p in config.pools]
        objectives = {o.name: o.priority for o in config.objectives}
        return _State(config, Router(pools), objectives, auth)

    def _auth(self, config: GatewayConfig, previous: Auth | None) -> Auth:
        """The auth state of `config` (keys file and env vars read now).

        Raises:
            GatewayConfigError: a key file, env var or objective is wrong.
        """
        objectives = {o.name: o.priority for o in config.objectives}
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = 0.0  # outside a loop; new budgets start full, so any start time will do
        try:
            return Auth(config.auth, objectives, config.pool_keys(), previous=previous, now=now)
        except sg.ConfigError as exc:
            raise GatewayConfigError(f"auth: {exc}") from None

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
        auth = self._auth(config, None if self._state is None else self._state.auth)
        flow_control = auth.flow_control(config.flow_control)
        for settings in config.pools:
            self._pools[settings.name].apply(settings, flow_control, config.priorities)
        old = self._config
        self._bodies.limit = config.server.body_memory_budget
        for section in _RESTART_ONLY:
            if getattr(old.server, section) != getattr(config.server, section):
                _log.warning("config reload: server.%s changes only on restart", section)
        if old.metrics != config.metrics:
            _log.warning("config reload: the metrics section changes only on restart")
        self._config = config
        self._state = self._new_state(config, auth)
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        ex = Exchange(scope, receive, send)
        try:
            await self._route(ex)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # A client that left, or uvicorn ending what still runs at the end of
            # drain_grace: the request is over and nothing waits on this task, so the
            # cancellation is absorbed (as for a disconnect) instead of becoming a
            # traceback in uvicorn's log. Any other cancellation propagates.
            if (ex.disconnected or self.draining) and task is not None and task.uncancel() == 0:
                if ex.disconnected:
                    self._client_left(ex.record)
                else:
                    await self._cut_at_drain(ex)
                return
            raise
        except ClientGone:
            return
        except Exception as exc:
            await self._fail(ex, exc)
        finally:
            ex.close()
            record = ex.record
            if record.upstream_error is not None:
                pool = record.pool.name if record.pool is not None else "-"
                self.metrics.upstream_error(pool, record.backend or "-", record.upstream_error)

    async def _route(self, ex: Exchange) -> None:
        state = self._state
        if state is None:
            raise sg.ControllerClosedError("the gateway is not running")
        scope = ex.scope
        ex.server = state.config.server
        # The raw path, not the decoded one: a percent-encoded or dot-segment variant of
        # a route is a different path here, so it cannot be smuggled past flow control.
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        handler = self._routes.get((scope["method"], raw))
        if handler is not None:
            await handler(ex, state)
        elif raw in self._paths:
            raise GatewayError(
                405, f"{scope['method']} is not allowed on {scope['path']}",
                code="method_not_allowed",
            )  # fmt: skip
        else:
            path = raw.decode("ascii", "backslashreplace")
            raise GatewayError(404, f"no route for {scope['method']} {path}", code="not_found")

    async def _models(self, ex: Exchange, state: _State) -> None:
        doc = await merged_models(self._require_session(), self._pools.values(), ex.scope)
        await ex.respond(200, orjson.dumps(doc), _JSON)

    async def _healthz(self, ex: Exchange, state: _State) -> None:
        await ex.respond(200, b'{"status":"ok"}', _JSON)

    async def _readyz(self, ex: Exchange, state: _State) -> None:
        problems = readiness(self.draining, self._pools.values())
        body = orjson.dumps({"ready": not problems, "problems": problems})
        await ex.respond(503 if problems else 200, body, _JSON)

    async def _health(self, ex: Exchange, state: _State) -> None:
        # vLLM's /health, which load tools poll before starting: 200 when ready.
        await self._readyz(ex, state)

    async def _version(self, ex: Exchange, state: _State) -> None:
        await ex.respond(200, orjson.dumps({"version": sg.__version__}), _JSON)

    async def _metrics(self, ex: Exchange, state: _State) -> None:
        require_token(ex.scope, state.config.server.auth_token)
        await ex.respond(200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")

    async def _debug(self, ex: Exchange, state: _State) -> None:
        require_token(ex.scope, state.config.server.auth_token)
        doc = debug_document(
            self._pools, state.objectives, ex.scope.get("query_string", b""), draining=self.draining
        )
        body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
        await ex.respond(200, body, _JSON)

    def _require_client(self) -> Client:
        if self._client is None:
            raise sg.ControllerClosedError("the gateway is not running")
        return self._client

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise sg.ControllerClosedError("the gateway is not running")
        return self._session

    async def _inference(self, ex: Exchange, state: _State) -> None:
        auth = state.auth  # credentials are checked before the body is read
        record = ex.record
        classification = auth.classify(ex.scope, state.objectives, state.config.server.max_ttl)
        body = await ex.read_body(state.config.server.max_body_bytes, self._bodies)
        doc = parse_body(body)
        record.pool = pool = state.router.route(doc.get("model"))
        record.classification = classification
        if auth.rewrites:
            ex.scope["headers"] = auth.outbound(ex.scope["headers"], pool.name)
        ctl = pool.controller
        ex.watch_disconnect()
        input_tokens, output_tokens = await self._estimate(ex, pool, doc)
        stream = doc.get("stream") is True
        priority = classification.priority
        body, res = _upstream_body(doc, body, pool, priority, ex.scope["path"])
        del doc  # a queued request holds its body, not also its parsed copy
        record.enqueued_at = record_clock()
        if not pool.has_free_slot():
            # It would wait: take a slot back from lower work, or pause some (_preempt.py).
            pool.preemption.make_room(priority)
        enqueue = ctl.enqueue_and_wait(
            sg.FlowKey(classification.fairness_id, priority),
            size=len(body),
            ttl=classification.ttl,
            slo=classification.slo,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            claim=functools.partial(body_claim, body),  # Retry-After promises
            # A pausable request gives its slot back at once for the top band, so
            # it may run in the headroom kept for that band (_core/_headroom.py).
            preemptible=res is not None,
        )
        # Dispatched at once if nothing waits; else queue events, if asked for, as it waits.
        waiting = self.queue_events.around(ex, ctl, priority, stream=stream)
        if waiting is None:  # the usual case: no context manager to enter and leave
            ticket = await enqueue
        else:
            try:
                async with waiting:
                    ticket = await enqueue
            finally:
                enqueue.close()  # never started if entering failed; else a no-op
        record.left_queue()
        record.eta_s = ticket.eta
        record.outcome = _DISPATCHED
        pool.dispatched(ticket.priority, ticket.dispatched_at or 0.0)
        self.metrics.record(
            classification.fairness_id, ticket.priority, _DISPATCHED, record.queue_s
        )
        await self._serve(ex, state, ticket, body, res, stream=stream)
        if (added := record.added_s()) is not None:
            self.metrics.added_latency.observe(added)

    async def _serve(
        self,
        ex: Exchange,
        state: _State,
        ticket: sg.Ticket,
        body: bytes | bytearray,
        res: Resumable | None,
        *,
        stream: bool,
    ) -> None:
        """Relay a dispatched request (again after each preemption), then settle its
        tokens and release its ticket, whatever happened."""
        pool, classification = ex.record.pool, ex.record.classification
        assert pool is not None
        assert classification is not None
        auth, flow = state.auth, classification.fairness_id
        charged = ticket.input_tokens + ticket.output_tokens
        auth.spend(flow, charged)
        meter = UsageMeter(ticket, pool.observe(ticket))
        try:
            session = self._require_client()
            relay_once = relay if res is None else res.relay
            while True:
                with pool.preemption.track(ticket, ex, stream=stream, resumable=res):
                    try:
                        await relay_with_retry(
                            pool.detector,
                            ticket,
                            functools.partial(
                                relay_once, session, ex, body=body, stream=stream, meter=meter
                            ),
                            lambda: ex.started,
                        )
                        if res is None or not res.requested:
                            break
                    except asyncio.CancelledError:
                        if await pool.preemption.end_evicted(ex, res):
                            break  # evicted (opt-in): its stream ended with an error event
                        if not pool.preemption.absorb(ex):
                            raise
                # Taken back or paused (_preempt.py): wait, then the same body or the rest.
                meter.abandon()
                if res is not None and res.requested:
                    body = res.pause(ex) or body
                ticket = await pool.preemption.wait_again(ticket, ex, res)
                meter = UsageMeter(ticket, pool.observe(ticket))
        except Exception:
            if not ex.started:
                meter.failed()
            raise
        finally:
            # Usage first, so the release teaches the flow's output average the truth.
            meter.close()
            correction = ticket.input_tokens + ticket.output_tokens - charged
            auth.spend(flow, correction)
            began = time.perf_counter()
            ticket.release()
            self.metrics.dispatch_cycle.observe(time.perf_counter() - began)
            self.metrics.tokens(flow, ticket.priority, ticket)

    async def _estimate(
        self, ex: Exchange, pool: Pool, doc: dict[str, Any]
    ) -> tuple[int | None, int | None]:
        """Estimated (input, output) tokens, charged at dispatch and corrected later."""
        if ex.scope["path"] in _NO_OUTPUT:
            output_tokens: int | None = 0  # embeddings, scores, pooling: generate nothing
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
        """Utility routes (`PASSTHROUGH_ROUTES`): relayed to the least-loaded backend of
        the request's pool, without flow control."""
        auth = state.auth
        if auth.mode == "keys":
            auth.authenticate(ex.scope["headers"])
        body = await ex.read_body(state.config.server.max_body_bytes, self._bodies)
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
        ex.record.pool = pool
        if auth.rewrites:
            ex.scope["headers"] = auth.outbound(ex.scope["headers"], pool.name)
        ex.watch_disconnect()
        await relay(self._require_client(), ex, backend.url, body, stream=stream)

    # -- outcomes -----------------------------------------------------------------------------

    async def _fail(self, ex: Exchange, exc: Exception) -> None:
        """Answer an error: the single place where failures become responses."""
        record = ex.record
        retry_after: int | None = None
        queue: tuple[float | None, int] | None = None
        if isinstance(exc, sg.FlowControlError) and not record.dispatched:
            record.left_queue()
            self._record(record, exc.outcome, reason=str(exc), status=exc.status_hint)
            pool, classification = record.pool, record.classification
            if exc.status_hint == 429 and pool is not None and classification is not None:
                retry_after = pool.retry_after(classification.priority, exc)
                queue = pool.controller.estimate_wait(classification.priority)
        elif not isinstance(exc, GatewayError | sg.FlowControlError):
            _log.exception("unexpected error on %s %s", ex.scope["method"], ex.scope["path"])
        if ex.started:
            _log.warning("error after the response started, connection closed: %r", exc)
            return
        await ex.respond_error(exc, retry_after=retry_after, queue=queue)

    async def _cut_at_drain(self, ex: Exchange) -> None:
        grace = self._config.server.drain_grace
        _log.warning(
            "drain_grace (%g s) is over: ending %s %s still in flight",
            grace,
            ex.scope["method"],
            ex.scope["path"],
        )
        err = GatewayError(
            503,
            f"the gateway is shutting down; drain_grace ({grace:g} s) ended this request",
            type="service_unavailable",
            code="shutting_down",
            outcome=ex.record.outcome,
        )
        if not ex.started:
            await ex.respond_error(err)
        elif ex.sse:
            await ex.chunk(sse_error_event(err))
            await ex.finish()

    def _client_left(self, record: RequestRecord) -> None:
        if record.enqueued_at is not None:  # it left while waiting in flow control
            record.left_queue()
            self._record(
                record, sg.Outcome.EVICTED_CANCELLED, reason="client disconnected", status=0
            )

    def _record(
        self, record: RequestRecord, outcome: sg.Outcome, *, reason: str, status: int
    ) -> None:
        """Count and log a request that left flow control without a ticket."""
        record.outcome = outcome
        classification = record.classification
        if classification is None:
            return
        self.metrics.record(
            classification.fairness_id, classification.priority, outcome, record.queue_s
        )
        _log.info(
            "flow-control outcome=%s pool=%s flow=%s priority=%d objective=%s status=%d "
            "queue_ms=%.1f reason=%r",
            outcome.value,
            record.pool.name if record.pool is not None else "-",
            classification.fairness_id,
            classification.priority,
            classification.objective or "-",
            status,
            record.queue_s * 1000.0,
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
