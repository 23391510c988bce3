"""Operational endpoints' content: readiness, /debug/flowcontrol, merged /v1/models, auth."""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from ._errors import GatewayError
from ._saturation import UtilizationDetector

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._app import Gateway
    from ._pool import Pool

__all__ = ["debug_document", "merged_models", "readiness", "require_token"]

_MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def require_token(scope: dict[str, Any], token: str | None) -> None:
    """Check ``Authorization: Bearer <token>`` when a token is configured.

    Raises:
        GatewayError: the header is missing or wrong (401).
    """
    if token is None:
        return
    expected = b"Bearer " + token.encode()
    for name, value in scope["headers"]:
        if name == b"authorization" and hmac.compare_digest(value, expected):
            return
    raise GatewayError(
        401, "this endpoint needs 'Authorization: Bearer <token>'", code="unauthorized"
    )


def readiness(gateway: Gateway) -> list[str]:
    """Why the gateway should not get traffic yet (empty when ready)."""
    if gateway.draining:
        return ["draining: the gateway is shutting down"]
    problems = []
    for pool in gateway.pools.values():
        detector = pool.detector
        if not detector.has_endpoints():
            problems.append(f"pool {pool.name}: no reachable backend")
        elif isinstance(detector, UtilizationDetector) and not any(
            b.scraped_at is not None for b in detector.backends.values()
        ):
            problems.append(f"pool {pool.name}: no backend's metrics scraped yet")
    return problems


def _pool_document(pool: Pool, now: float) -> dict[str, Any]:
    stats = pool.controller.statistics()
    detector = pool.detector
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
            for f in stats.flows.values()
        ],
    }


def debug_document(gateway: Gateway) -> dict[str, Any]:
    """The /debug/flowcontrol JSON: bands, flows, oldest waiter and backends per pool."""
    now = asyncio.get_running_loop().time()
    return {
        "draining": gateway.draining,
        "objectives": {o.name: o.priority for o in gateway.config.objectives},
        "pools": {name: _pool_document(pool, now) for name, pool in gateway.pools.items()},
    }


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
