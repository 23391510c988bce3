"""Operations: metrics, health, debug, auth, merged models, pass-through, live reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import GatewayConfigError, serve_in_background

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": []})
PREFIX = "inference_extension_flow_control_"


@contextlib.asynccontextmanager
async def stack(
    **sections: Any,
) -> AsyncIterator[tuple[Gateway, FakeUpstream, aiohttp.ClientSession, str]]:
    fake = FakeUpstream()
    async with (
        serve_app(fake) as url,
        serve_in_background(make_config([url], **sections)) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        yield gw, fake, client, url


@pytest.mark.asyncio
async def test_metrics_use_the_upstream_names() -> None:
    """/metrics exposes the upstream-compatible flow-control series and our extras."""
    async with stack() as (_, _fake, client, url):
        headers = {"x-gateway-inference-fairness-id": "tenant-a"}
        async with client.post(CHAT, data=BODY, headers=headers) as r:
            assert r.status == 200
        async with client.get("/metrics") as r:
            assert r.status == 200
            assert r.headers["x-sluicegate-outcome"] == "Bypassed"
            text = await r.text()
    for name in (
        "request_queue_duration_seconds_bucket",
        "queue_size",
        "queue_bytes",
        "dispatch_cycle_duration_seconds_bucket",
        "pool_saturation",
        "requests_total",
        "stale_backends",
        "backend_in_flight",
        "gateway_added_latency_seconds_bucket",
    ):
        assert f"\n{PREFIX}{name}" in text, name
    assert (
        f'{PREFIX}request_queue_duration_seconds_count{{fairness_id="tenant-a",'
        f'outcome="Dispatched",priority="0"}} 1.0' in text
    )
    assert f'{PREFIX}requests_total{{outcome="Dispatched",priority="0"}} 1.0' in text
    assert f'{PREFIX}backend_in_flight{{backend="{url}",pool="default"}} 0.0' in text


@pytest.mark.asyncio
async def test_fairness_id_labels_are_capped() -> None:
    """Fairness ids beyond max_fairness_ids are reported as 'other'."""
    async with stack(metrics={"max_fairness_ids": 2}) as (_, _fake, client, _url):
        for tenant in ("a", "b", "c", "d"):
            headers = {"x-gateway-inference-fairness-id": tenant}
            async with client.post(CHAT, data=BODY, headers=headers) as r:
                assert r.status == 200
        async with client.get("/metrics") as r:
            text = await r.text()
    counts = [line for line in text.splitlines() if "request_queue_duration_seconds_count" in line]
    ids = sorted(line.split('fairness_id="')[1].split('"')[0] for line in counts)
    assert ids == ["a", "b", "other"]
    assert any('fairness_id="other"' in line and line.endswith(" 2.0") for line in counts)


@pytest.mark.asyncio
async def test_health_readiness_and_debug() -> None:
    """healthz is up, readyz turns ready after the first scrape, debug shows the state."""
    sat = {"type": "utilization", "scrape_interval": 0.02}
    async with stack(saturation=sat) as (gw, fake, client, url):
        async with client.get("/healthz") as r:
            assert r.status == 200
        await eventually(lambda: fake.metrics_scrapes >= 1)
        async with client.get("/readyz") as r:
            assert r.status == 200
            assert (await r.json())["ready"] is True
        async with client.get("/debug/flowcontrol") as r:
            doc = await r.json()
        pool = doc["pools"]["default"]
        assert pool["backends"][0]["url"] == url
        assert pool["backends"][0]["waiting"] == 0.0
        assert {b["priority"] for b in pool["bands"]} >= {0}
        await gw.drain()
        async with client.get("/readyz") as r:
            assert r.status == 503
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "shutting_down"


@pytest.mark.asyncio
async def test_debug_shows_the_oldest_waiting_request_per_flow() -> None:
    """A queued request appears in its flow with its age."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with stack(saturation=sat) as (gw, fake, client, _url):
        fake.hold = asyncio.Event()
        tasks = [asyncio.ensure_future(client.post(CHAT, data=BODY)) for _ in range(2)]
        await eventually(lambda: gw.pools["default"].controller.statistics().queued_requests == 1)
        async with client.get("/debug/flowcontrol") as r:
            flows = (await r.json())["pools"]["default"]["flows"]
        assert flows[0]["fairness_id"] == "default-flow"
        assert flows[0]["queued_requests"] == 1
        assert flows[0]["oldest_waiting_s"] >= 0
        fake.hold.set()
        for task in tasks:
            async with await task as r:
                assert r.status == 200


@pytest.mark.asyncio
async def test_bearer_token_guards_metrics_and_debug() -> None:
    """With server.auth_token, /metrics and /debug/* need the token; inference does not."""
    server = {"host": "127.0.0.1", "port": 0, "auth_token": "s3cret"}
    async with stack(server=server) as (_, _fake, client, _url):
        for path in ("/metrics", "/debug/flowcontrol"):
            async with client.get(path) as r:
                assert r.status == 401
            async with client.get(path, headers={"authorization": "Bearer nope"}) as r:
                assert r.status == 401
            async with client.get(path, headers={"authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 200


@pytest.mark.asyncio
async def test_models_are_merged_and_other_routes_pass_through() -> None:
    """/v1/models lists backend models plus configured names; /tokenize is relayed."""
    async with stack(pool={"models": ["fake-model", "alias-model", "x-*"]}) as (
        _,
        fake,
        client,
        _url,
    ):
        async with client.get("/v1/models") as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        assert ids == ["fake-model", "alias-model"]
        payload = orjson.dumps({"model": "fake-model", "prompt": "x"})
        async with client.post("/tokenize?x=1", data=payload) as r:
            assert r.status == 200
            assert r.headers["x-sluicegate-outcome"] == "Bypassed"
            assert (await r.json())["path"] == "/tokenize"
        async with client.get("/nope") as r:
            assert r.status == 404
            assert "error" in await r.json()
        assert fake.requests[-1][2] == payload


@pytest.mark.asyncio
async def test_reload_adds_an_objective_band_and_changes_limits_live() -> None:
    """A new objective gets its band at once; queued work survives the reload."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with stack(saturation=sat) as (gw, fake, client, url):
        fake.hold = asyncio.Event()
        tasks = [asyncio.ensure_future(client.post(CHAT, data=BODY)) for _ in range(2)]
        ctl = gw.pools["default"].controller
        await eventually(lambda: ctl.statistics().queued_requests == 1)
        new = make_config(
            [url],
            saturation={"type": "concurrency", "max_in_flight": 2},
            objectives=[{"name": "premium", "priority": 20}],
        )
        gw.reload(new)
        assert 20 in ctl.statistics().bands
        await eventually(lambda: len(fake.requests) == 2)  # the limit grew: it dispatched
        headers = {"x-gateway-inference-objective": "premium"}
        tasks.append(asyncio.ensure_future(client.post(CHAT, data=BODY, headers=headers)))
        await eventually(lambda: ctl.statistics().bands[20].queued_requests == 1)
        fake.hold.set()
        for task in tasks:
            async with await task as r:
                assert r.status == 200


@pytest.mark.asyncio
async def test_reload_that_needs_a_restart_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Changing the pool set or a saturation type is refused; the running config stays."""
    async with stack() as (gw, _fake, _client, url):
        before = gw.config
        bad = make_config([url], pool={"name": "other"})
        with pytest.raises(GatewayConfigError, match="needs a restart"):
            gw.reload(bad)
        bad = make_config([url], saturation={"type": "utilization"})
        with pytest.raises(GatewayConfigError, match=r"saturation\.type"):
            gw.reload(bad)
        assert gw.config is before
        caplog.set_level(logging.INFO, "sluicegate.gateway")
        assert gw.reload_from_file() is False
