"""Operational endpoints' content: readiness, /debug/flowcontrol, merged /v1/models, auth."""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import aiohttp
import orjson

from ._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._pool import Pool

__all__ = ["debug_document", "merged_models", "readiness", "require_token"]

_MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
#: Flows /debug/flowcontrol lists without ``?flows=``, and the most it lists.
DEBUG_FLOWS: Final = 20
MAX_DEBUG_FLOWS: Final = 10_000


def require_token(scope: dict[str, Any], token: str | None) -> None:
    """Check ``Authorization: Bearer <token>`` when a token is configured.

    The scheme is case-insensitive (RFC 7235), the token is compared in constant time.

    Raises:
        GatewayError: the header is missing or wrong (401).
    """
    if token is None:
        return
    expected = token.encode()
    for name, value in scope["headers"]:
        if name != b"authorization":
            continue
        scheme, _, credentials = value.strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), expected):
            return
    raise GatewayError(
        401, "this endpoint needs 'Authorization: Bearer <token>'", code="unauthorized"
    )


def readiness(draining: bool, pools: Iterable[Pool]) -> list[str]:
    """Why a gateway with `pools` should not get traffic yet (empty when ready)."""
    if draining:
        return ["draining: the gateway is shutting down"]
    problems = []
    for pool in pools:
        detector = pool.detector
        if not detector.has_endpoints():
            problems.append(f"pool {pool.name}: no usable backend ({_why_unusable(pool)})")
        elif (sat := pool.settings.saturation).type == "utilization":
            if not any(b.scraped_at is not None for b in detector.backends.values()):
                problems.append(f"pool {pool.name}: no backend's metrics scraped yet")
            elif sat.stale_policy == "fail-closed" and detector.stale_backends() == len(
                detector.backends
            ):
                # fail-closed treats stale as saturated: nothing would be dispatched.
                problems.append(
                    f"pool {pool.name}: every backend's metrics are stale (stale_policy "
                    "fail-closed holds all requests)"
                )
    return problems


def _why_unusable(pool: Pool) -> str:
    """Counts only: /readyz is unauthenticated, so it names no backend URL."""
    backends = pool.detector.backends.values()
    down = sum(1 for b in backends if not b.healthy)
    unreachable = sum(1 for b in backends if b.healthy and not b.reachable)
    parts = []
    if down:
        parts.append(f"{down} out of service after upstream failures, probing their health")
    if unreachable:
        parts.append(f"{unreachable} refusing connections or without metrics")
    return "; ".join(parts) or "no backend configured"


def _pool_document(pool: Pool, now: float, top: int) -> dict[str, Any]:
    stats = pool.controller.summary(top)
    detector = pool.detector
    flows = sorted(stats.flows.values(), key=lambda f: (-f.queued_requests, -f.in_flight))
    return {
        "saturation": detector.pool_saturation(),
        "stale_backends": detector.stale_backends(),
        "backends": [detector.describe(b) for b in detector.backends.values()],
        "preemption": pool.preemption.describe(),
        "submitted": stats.submitted,
        "queued_requests": stats.queued_requests,
        "queued_bytes": stats.queued_bytes,
        "in_flight": stats.in_flight,
        "closed": stats.closed,
        "outcomes": {o.value: n for o, n in stats.outcomes.items()},
        "bands": [
            {
                "priority": b.priority,
                "queued_requests": b.queued_requests,
                "queued_bytes": b.queued_bytes,
                "in_flight": b.in_flight,
                "flows": b.flows,
                "max_requests": b.max_requests,
                "max_bytes": b.max_bytes,
                "ordering": b.ordering,
                "fairness": b.fairness,
                "dynamic": b.dynamic,
                "retiring": b.retiring,
                "jain_index": b.jain_index,
                "max_service_gap": b.max_service_gap,
            }
            for b in stats.bands.values()
        ],
        "flows": [
            {
                "fairness_id": f.key.id,
                "priority": f.key.priority,
                "queued_requests": f.queued_requests,
                "queued_bytes": f.queued_bytes,
                "in_flight": f.in_flight,
                "oldest_waiting_s": None if f.oldest_arrival is None else now - f.oldest_arrival,
                "weight": f.weight,
                "input_tokens": f.input_tokens,
                "output_tokens": f.output_tokens,
                "service": f.service,
            }
            for f in flows
        ],
        "flows_omitted": sum(b.flows for b in stats.bands.values()) - len(flows),
    }


def debug_document(
    pools: Mapping[str, Pool],
    objectives: Mapping[str, int],
    query: bytes = b"",
    *,
    draining: bool = False,
) -> dict[str, Any]:
    """The /debug/flowcontrol JSON: bands, backends and the largest flows per pool.

    ``?flows=N`` (default 20, at most 10,000) lists the N flows with the most queued
    requests, largest first; ``flows_omitted`` counts the others. The page costs
    O(bands + N) snapshots, however many tenants there are.

    Raises:
        GatewayError: ``flows`` is not an integer in range (400).
    """
    top = _flows_param(query)
    now = asyncio.get_running_loop().time()
    return {
        "draining": draining,
        "objectives": dict(objectives),
        "pools": {name: _pool_document(pool, now, top) for name, pool in pools.items()},
    }


def _flows_param(query: bytes) -> int:
    values = parse_qs(query.decode("latin-1")).get("flows")
    if not values:
        return DEBUG_FLOWS
    try:
        top = int(values[-1])
    except ValueError:
        top = -1
    if not 0 <= top <= MAX_DEBUG_FLOWS:
        raise GatewayError(
            400,
            f"flows must be an integer from 0 to {MAX_DEBUG_FLOWS}, got {values[-1]!r}",
            code="invalid_query",
            param="flows",
        )
    return top


async def _backend_models(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    try:
        async with session.get(url + "/v1/models", headers=headers, timeout=_MODELS_TIMEOUT) as r:
            if r.status != 200:
                return []
            doc = orjson.loads(await r.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return []
    data = doc.get("data") if isinstance(doc, dict) else None
    return [m for m in data if isinstance(m, dict) and "id" in m] if isinstance(data, list) else []


async def merged_models(
    session: aiohttp.ClientSession, pools: Iterable[Pool], scope: dict[str, Any]
) -> dict[str, Any]:
    """GET /v1/models: the union of every reachable backend's list, by model id.

    Models named literally in the config but served by no reachable backend are
    listed too, so clients see what the gateway routes.
    """
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name == b"authorization"
    }
    pools = list(pools)
    urls = [b.url for p in pools for b in p.detector.backends.values() if b.reachable]
    lists = await asyncio.gather(*(_backend_models(session, u, headers) for u in urls))
    merged: dict[str, dict[str, Any]] = {}
    for models in lists:
        for model in models:
            merged.setdefault(str(model["id"]), model)
    for pool in pools:
        for name in pool.settings.models:
            if not any(c in name for c in "*?[") and name not in merged:
                merged[name] = {"id": name, "object": "model", "owned_by": "sluicegate"}
    return {"object": "list", "data": list(merged.values())}
