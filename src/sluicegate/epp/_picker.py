"""The endpoint picker's decisions: which pool, which flow, when, and which endpoint.

`EndpointPicker` runs the HTTP gateway's machinery without its data path: a `Gateway`
(entered, never served) owns the pools, their controllers and detectors, the metrics
scrapes, reload and drain; the picker adds what Envoy's protocol needs: a router over
the running pools, objectives merged from the YAML file and ``InferenceObjective``
manifests, subset controllers for hinted requests, and the decision-latency record.
The per-stream protocol lives in `_stream`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import urlsplit

import orjson
from prometheus_client import Histogram

import sluicegate as sg
from sluicegate.gateway import Gateway, GatewayConfigError, GatewayError, Router, classify
from sluicegate.gateway._app import parse_body
from sluicegate.gateway._introspect import debug_document, readiness
from sluicegate.gateway._tokens import estimate_input_tokens, estimate_output_tokens

from ._objectives import load_objectives
from ._protocol import FULL_DUPLEX
from ._subset import SubsetControllers, backend_of

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from sluicegate.gateway import Classification, GatewayConfig, Pool

__all__ = ["Admission", "EndpointPicker", "Refusal", "endpoint_of"]

_log = logging.getLogger("sluicegate.epp")

INFERENCE_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_DISPATCHED: Final = sg.Outcome.DISPATCHED
_DECISION_BUCKETS: Final = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1, 10,
)  # fmt: skip


def endpoint_of(url: str) -> str:
    """``http://10.0.0.5:8000`` -> ``10.0.0.5:8000`` (what Envoy's ORIGINAL_DST takes)."""
    return urlsplit(url).netloc or url


@final
@dataclass(frozen=True, slots=True)
class _State:
    """What a decision reads; swapped whole on reload."""

    config: GatewayConfig
    router: Router
    objectives: Mapping[str, int]


@final
class Refusal(Exception):
    """Flow control refused or evicted a request: the error, with what its answer needs."""

    def __init__(self, error: sg.FlowControlError, queue_s: float, retry_after: int | None):
        super().__init__(str(error))
        self.error = error
        self.queue_s = queue_s
        self.retry_after = retry_after


@final
@dataclass(slots=True)
class Admission:
    """A decided request: its endpoint and, when flow-controlled, its ticket."""

    endpoint: str
    pool: Pool
    ticket: sg.Ticket | None = None
    classification: Classification | None = None
    stream: bool = False
    #: Dispatched through a subset controller (see `_subset`).
    subset: bool = False
    queue_s: float = 0.0


@final
class EndpointPicker:
    """Flow control and endpoint picking for Envoy, over the gateway's pools.

    Use it as an async context manager; serve it with `serve_in_background` or
    `sluicegate epp`.

    Args:
        config: the validated configuration (the `sluicegate serve` schema).
        config_path: the file it came from, for `reload`.
        objectives_dir: a directory of ``InferenceObjective`` manifests.
        body_mode: the body mode assumed when Envoy does not announce one
            (``ProcessingMode.FULL_DUPLEX_STREAMED`` or ``BUFFERED``).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: str | Path | None = None,
        objectives_dir: str | Path | None = None,
        body_mode: int = FULL_DUPLEX,
    ) -> None:
        self.gateway = Gateway(config, config_path=config_path)
        self.objectives_dir = Path(objectives_dir) if objectives_dir is not None else None
        self.body_mode = body_mode
        self.manifest_objectives: dict[str, int] = {}
        self.subsets = SubsetControllers(config.flow_control, config.priorities)
        self._state: _State | None = None
        #: Open ext_proc streams (one per HTTP request Envoy is processing).
        self.streams = 0
        #: Recent decision latencies in seconds (body received -> pick sent).
        self.decisions: deque[float] = deque(maxlen=65536)
        self.decision_seconds = Histogram(
            f"{config.metrics.prefix}epp_decision_duration_seconds",
            "Endpoint picker: from the end of the request body to the pick sent to Envoy.",
            buckets=_DECISION_BUCKETS,
            registry=self.gateway.metrics.registry,
        )

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    @property
    def pools(self) -> Mapping[str, Pool]:
        return self.gateway.pools

    @property
    def draining(self) -> bool:
        return self.gateway.draining

    @property
    def objectives(self) -> Mapping[str, int]:
        """Objective name -> priority in force (config, overridden by manifests)."""
        return self._require_state().objectives

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> EndpointPicker:
        if self.objectives_dir is not None:
            self.manifest_objectives = load_objectives(self.objectives_dir)
        await self.gateway.__aenter__()
        self._adopt()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: queued requests get 503; scrapes stop."""
        await self.subsets.aclose()
        await self.gateway.aclose()

    async def drain(self) -> None:
        """Refuse new requests and answer every queued one 503; in-flight ones go on."""
        await self.subsets.aclose()
        await self.gateway.drain()

    # -- reload -----------------------------------------------------------------------------

    def _adopt(self) -> None:
        config = self.gateway.config
        objectives = {o.name: o.priority for o in config.objectives}
        objectives.update(self.manifest_objectives)
        priorities = {0, *objectives.values()}
        for pool in self.pools.values():
            pool.controller.reconcile_priorities(priorities)
        self.subsets.apply(config.flow_control, priorities)
        router = Router([self.pools[p.name] for p in config.pools])
        self._state = _State(config, router, objectives)

    def reload(self, config: GatewayConfig) -> None:
        """Adopt `config` live (see `Gateway.reload`).

        Raises:
            GatewayConfigError: it cannot be applied live; nothing changed.
        """
        self.gateway.reload(config)
        self._adopt()

    def reload_from_file(self) -> bool:
        """Reload the config file; an invalid one is refused and logged. Returns success."""
        if not self.gateway.reload_from_file():
            return False
        self._adopt()
        return True

    def reload_objectives(self) -> bool:
        """Re-read the manifests directory; an invalid one is refused and logged."""
        if self.objectives_dir is None:
            return False
        try:
            self.manifest_objectives = load_objectives(self.objectives_dir)
        except GatewayConfigError as exc:
            _log.error("objectives reload refused; the running ones stay. %s", exc)
            return False
        self._adopt()
        _log.info("objectives reloaded from %s: %s", self.objectives_dir, self.objectives)
        return True

    def _require_state(self) -> _State:
        if self._state is None:
            raise sg.ControllerClosedError("the endpoint picker is not running")
        return self._state

    # -- decisions ----------------------------------------------------------------------------

    async def admit(
        self, headers: list[tuple[bytes, bytes]], body: bytes, hint: list[str] | None
    ) -> Admission:
        """Decide one request: wait in flow control if it is an inference call.

        Raises:
            GatewayError: bad body, header or model (4xx), as the HTTP gateway answers.
            sluicegate.FlowControlError: no endpoint (503) before reaching a queue.
            Refusal: refused or evicted by flow control.
        """
        state = self._require_state()
        path, method = _pseudo(headers)
        inference = path in INFERENCE_PATHS and method == "POST"
        if not inference:
            return self._passthrough(state, body, hint)
        doc = parse_body(body)
        pool = state.router.route(doc.get("model"))
        cls = classify(headers, state.objectives, state.config.server.max_ttl)
        ctl = pool.controller
        if hint is not None:
            ctl = await self.subsets.controller(pool, _hinted(pool, hint))
        began = time.perf_counter()
        try:
            ticket = await ctl.enqueue_and_wait(
                sg.FlowKey(cls.fairness_id, cls.priority),
                size=len(body),
                ttl=cls.ttl,
                slo=cls.slo,
                input_tokens=estimate_input_tokens(doc),
                output_tokens=0 if path == "/v1/embeddings" else estimate_output_tokens(doc),
            )
        except sg.FlowControlError as exc:
            queue_s = time.perf_counter() - began
            self._refused(pool, cls, exc, queue_s)
            retry_after = pool.retry_after(cls.priority, exc) if exc.status_hint == 429 else None
            raise Refusal(exc, queue_s, retry_after) from None
        except asyncio.CancelledError:  # cancelled while queued: Envoy or the client left
            self._record(cls, sg.Outcome.EVICTED_CANCELLED, time.perf_counter() - began)
            raise
        queue_s = ticket.queue_time or 0.0
        pool.dispatched(ticket.priority, ticket.dispatched_at or 0.0)
        self.gateway.metrics.record(cls.fairness_id, ticket.priority, _DISPATCHED, queue_s)
        backend = backend_of(ticket)
        if backend is None:  # the detector bound nothing: only if it misbehaves
            ticket.release()
            raise sg.NoEndpointsError(f"pool {pool.name} has no backend for the request")
        return Admission(
            endpoint_of(backend.url),
            pool,
            ticket,
            cls,
            stream=doc.get("stream") is True,
            subset=ctl is not pool.controller,
            queue_s=queue_s,
        )

    def _passthrough(self, state: _State, body: bytes, hint: list[str] | None) -> Admission:
        """Not an inference call: the least-loaded endpoint, without flow control."""
        model: object = None
        if body[:1] == b"{":
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                model = doc.get("model")
        try:
            pool = state.router.route(model)
        except GatewayError:
            if model is not None:
                raise
            pool = self.pools[state.config.pools[0].name]
        allowed = _hinted(pool, hint) if hint is not None else None
        candidates = [
            b
            for url, b in pool.detector.backends.items()
            if b.reachable and (allowed is None or url in allowed)
        ]
        if not candidates:
            raise sg.NoEndpointsError(f"pool {pool.name} has no reachable backend")
        backend = min(candidates, key=lambda b: b.in_flight)
        return Admission(endpoint_of(backend.url), pool)

    def release(self, admission: Admission) -> None:
        """The response ended (or the stream did): give the in-flight slot back."""
        ticket = admission.ticket
        if ticket is None:
            return
        admission.ticket = None
        backend = backend_of(ticket)
        metrics = self.gateway.metrics
        began = time.perf_counter()
        ticket.release()
        metrics.dispatch_cycle.observe(time.perf_counter() - began)
        cls = admission.classification
        if cls is not None:
            metrics.tokens(cls.fairness_id, ticket.priority, ticket)
        self.subsets.released(admission.pool, backend, from_subset=admission.subset)

    def observe_decision(self, seconds: float, queue_s: float) -> None:
        """Record one decision: its whole time, and its overhead (minus queueing)."""
        self.decisions.append(seconds)
        self.decision_seconds.observe(seconds)
        self.gateway.metrics.added_latency.observe(max(seconds - queue_s, 0.0))

    def _refused(
        self, pool: Pool, cls: Classification, exc: sg.FlowControlError, queue_s: float
    ) -> None:
        self._record(cls, exc.outcome, queue_s)
        _log.info(
            "flow-control outcome=%s pool=%s flow=%s priority=%d status=%d queue_ms=%.1f reason=%r",
            exc.outcome.value,
            pool.name,
            cls.fairness_id,
            cls.priority,
            exc.status_hint,
            queue_s * 1000.0,
            str(exc),
        )

    def _record(self, cls: Classification, outcome: sg.Outcome, queue_s: float) -> None:
        self.gateway.metrics.record(cls.fairness_id, cls.priority, outcome, queue_s)

    # -- introspection --------------------------------------------------------------------------

    def readiness(self) -> list[str]:
        """Why the picker should not get traffic yet (empty when ready)."""
        return readiness(self.gateway.draining, self.gateway.pools.values())

    def debug_document(self) -> dict[str, Any]:
        """The /debug/flowcontrol JSON: the gateway's, plus subsets and decision latency."""
        gateway = self.gateway
        objectives = {o.name: o.priority for o in gateway.config.objectives}
        doc = debug_document(gateway.pools, objectives, draining=gateway.draining)
        doc["objectives"] = dict(self.objectives)
        doc["objective_manifests"] = dict(self.manifest_objectives)
        doc["subsets"] = self.subsets.describe()
        doc["open_streams"] = self.streams
        samples = sorted(self.decisions)
        doc["decision_ms"] = {
            "samples": len(samples),
            "p50": _quantile(samples, 0.50) * 1e3,
            "p99": _quantile(samples, 0.99) * 1e3,
        }
        return doc


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _pseudo(headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    path = method = ""
    for name, value in headers:
        if name == b":path":
            path = value.split(b"?", 1)[0].decode("latin-1")
        elif name == b":method":
            method = value.decode("latin-1")
    return path, method


def _hinted(pool: Pool, hint: list[str]) -> frozenset[str]:
    """The pool's backend URLs named by a subset hint (``ip:port`` each).

    Raises:
        NoEndpointsError: the hint names none of the pool's backends (503).
    """
    wanted = set(hint)
    urls = frozenset(u for u in pool.detector.backends if endpoint_of(u) in wanted)
    if not urls:
        raise sg.NoEndpointsError(
            f"the subset hint names no endpoint of pool {pool.name}: {sorted(wanted)}"
        )
    return urls
