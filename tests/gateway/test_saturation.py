"""Saturation per pool: scraped utilization, stale policies, late binding, priorities."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

import sluicegate as sg
from sluicegate.gateway import (
    serve_in_background,
)

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": []})


def util(**kw: Any) -> dict[str, Any]:
    return {"type": "utilization", "scrape_interval": 0.02, "staleness": 0.5, **kw}


@contextlib.asynccontextmanager
async def gateway(
    fakes: list[FakeUpstream], **sections: Any
) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession]]:
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve_app(f)) for f in fakes]
        gw = await stack.enter_async_context(serve_in_background(make_config(urls, **sections)))
        client = await stack.enter_async_context(aiohttp.ClientSession(base_url=str(gw.url)))
        yield gw, client


def queued(gw: Gateway) -> int:
    return gw.pools["default"].controller.statistics().queued_requests


# -- end to end ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_utilization_holds_requests_while_the_backend_reports_a_queue() -> None:
    """waiting >= queue_depth_threshold saturates the pool; a lower reading dispatches."""
    fake = FakeUpstream()
    fake.waiting = 10
    async with gateway([fake], saturation=util()) as (gw, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        task = asyncio.ensure_future(client.post(CHAT, data=BODY))
        await eventually(lambda: queued(gw) == 1)
        assert fake.requests == []
        fake.waiting = 0
        async with await task as r:
            assert r.status == 200
            assert float(r.headers["x-sluicegate-queue-ms"]) > 0


@pytest.mark.asyncio
async def test_kv_cache_usage_saturates_too() -> None:
    """kv >= kv_cache_threshold saturates the pool."""
    fake = FakeUpstream()
    fake.kv = 0.95
    async with gateway([fake], saturation=util()) as (gw, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        task = asyncio.ensure_future(client.post(CHAT, data=BODY))
        await eventually(lambda: queued(gw) == 1)
        fake.kv = 0.1
        async with await task as r:
            assert r.status == 200


@pytest.mark.asyncio
async def test_burst_between_scrapes_cannot_overshoot() -> None:
    """With one scrape only, dispatches stop at the queue-depth threshold, and stay there:
    a later request (a barrier every pending pass has run before) finds it unchanged."""
    fake = FakeUpstream()
    fake.hold = asyncio.Event()
    sat = util(queue_depth_threshold=2, scrape_interval=30, staleness=60)
    async with gateway([fake], saturation=sat) as (gw, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        tasks = [asyncio.ensure_future(client.post(CHAT, data=BODY)) for _ in range(4)]
        await eventually(lambda: queued(gw) == 2 and len(fake.requests) == 2)
        tasks.append(asyncio.ensure_future(client.post(CHAT, data=BODY)))
        await eventually(lambda: queued(gw) == 3)
        stats = gw.pools["default"].controller.statistics()
        assert stats.submitted == 5 and stats.dispatched == 2 and stats.in_flight == 2
        assert len(fake.requests) == 2 and fake.metrics_scrapes == 1
        fake.hold.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "dispatched"), [("fail-closed", False), ("fail-open", True), ("last-known", True)]
)
async def test_stale_metrics_follow_the_policy_end_to_end(policy: str, dispatched: bool) -> None:
    """When /metrics starts failing, the backend's figures age and stale_policy decides."""
    fake = FakeUpstream()
    sat = util(stale_policy=policy, staleness=0.1)
    async with gateway([fake], saturation=sat) as (gw, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        fake.metrics_status = 500
        detector = gw.pools["default"].detector
        (backend,) = detector.backends.values()
        # A scrape that started before the change may still succeed late (a loaded
        # machine): wait for a failed one, after which the one scrape loop only fails.
        await eventually(lambda: backend.failures >= 1 and detector.stale_backends() == 1)
        async with client.get("/metrics") as r:
            text = await r.text()
        assert 'inference_extension_flow_control_stale_backends{pool="default"} 1.0' in text
        headers = {"x-sluicegate-ttl-ms": "300"}
        async with client.post(CHAT, data=BODY, headers=headers) as r:
            assert (r.status == 200) is dispatched
            if not dispatched:
                assert r.headers["x-sluicegate-outcome"] == "EvictedTTL"


@pytest.mark.asyncio
async def test_late_binding_spreads_over_the_least_loaded_backends() -> None:
    """Each dispatch goes to the backend with the fewest requests in flight."""
    fakes = [FakeUpstream(), FakeUpstream()]
    for f in fakes:
        f.hold = asyncio.Event()
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with gateway(fakes, saturation=sat) as (gw, client):
        tasks = [asyncio.ensure_future(client.post(CHAT, data=BODY)) for _ in range(3)]
        await eventually(lambda: queued(gw) == 1 and sum(len(f.requests) for f in fakes) == 2)
        assert [len(f.requests) for f in fakes] == [1, 1]
        for f in fakes:
            assert f.hold is not None
            f.hold.set()
        for task in tasks:
            async with await task as r:
                assert r.status == 200
        assert sum(len(f.requests) for f in fakes) == 3


@pytest.mark.asyncio
async def test_priority_order_under_saturation() -> None:
    """Queued interactive requests go before earlier batch ones; unknown objectives are 0."""
    fake = FakeUpstream()
    fake.hold = asyncio.Event()
    objectives = [{"name": "interactive", "priority": 10}, {"name": "batch", "priority": -1}]
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with gateway([fake], saturation=sat, objectives=objectives) as (gw, client):
        first = asyncio.ensure_future(client.post(CHAT, data=BODY))
        await eventually(lambda: len(fake.requests) == 1)
        tasks = []
        for objective in ("batch", "mystery", "interactive"):
            headers = {"x-gateway-inference-objective": objective}
            tasks.append(asyncio.ensure_future(client.post(CHAT, data=BODY, headers=headers)))
            await eventually(lambda: queued(gw) == len(tasks))
        bands = gw.pools["default"].controller.statistics().bands
        assert [bands[p].queued_requests for p in (10, 0, -1)] == [1, 1, 1]
        # Release one at a time so the order of arrival upstream is the dispatch order.
        for n in range(2, 5):
            fake.hold.set()
            fake.hold = asyncio.Event()
            await eventually(lambda: len(fake.requests) == n)  # noqa: B023 - awaited at once
        fake.hold.set()
        order = [h.get("x-gateway-inference-objective") for _, h, _ in fake.requests]
        assert order == [None, "interactive", "mystery", "batch"]
        for task in [first, *tasks]:
            async with await task as r:
                assert r.status == 200
        assert sg.Outcome.DISPATCHED in gw.pools["default"].controller.statistics().outcomes


@pytest.mark.asyncio
async def test_no_reachable_backend_waits_no_endpoint_ttl_then_503() -> None:
    """With every backend refusing connections, requests wait no_endpoint_ttl, then 503."""
    from .conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    config = make_config(
        [dead], saturation=util(), flow_control={"no_endpoint_ttl": 0.2, "default_ttl": 30}
    )
    async with (
        serve_in_background(config) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        detector = gw.pools["default"].detector
        await eventually(lambda: not detector.has_endpoints())
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 503
            assert r.headers["x-sluicegate-outcome"] == "EvictedNoEndpoints"
            assert (await r.json())["error"]["code"] == "no_endpoints"
        async with client.get("/readyz") as r:
            assert r.status == 503
