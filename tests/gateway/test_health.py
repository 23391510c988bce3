"""Passive backend health in every saturation mode, the retry on a failed connect, and
what a pool with no usable backend answers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import ConcurrencySettings, UtilizationSettings, serve_in_background
from sluicegate.gateway._saturation import (
    Backend,
    BackendMetrics,
    ConcurrencyDetector,
    UtilizationDetector,
)

from .conftest import FakeUpstream, eventually, free_port, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": []})
CONCURRENCY = {"type": "concurrency", "max_in_flight": 100}
UTILIZATION = {"type": "utilization", "scrape_interval": 0.02, "staleness": 0.5}
#: Fast probes, so a test sees a backend come back within a few tens of milliseconds.
FAST_HEALTH = {"failure_threshold": 3, "probe_backoff": 0.02, "max_probe_backoff": 0.1}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@contextlib.asynccontextmanager
async def gateway(
    backends: list[FakeUpstream | str], **sections: Any
) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession]]:
    """A gateway over `backends` (fakes are served; strings are used as URLs)."""
    async with contextlib.AsyncExitStack() as stack:
        urls = [
            b if isinstance(b, str) else await stack.enter_async_context(serve_app(b))
            for b in backends
        ]
        gw = await stack.enter_async_context(serve_in_background(make_config(urls, **sections)))
        client = await stack.enter_async_context(aiohttp.ClientSession(base_url=str(gw.url)))
        yield gw, client


def backends(gw: Gateway) -> list[Backend]:
    return list(gw.pools["default"].detector.backends.values())


# -- end to end ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_dead_backend_gets_no_traffic_in_concurrency_mode() -> None:
    """A refusing backend 'finishes' instantly, so it looked least loaded and got most of
    the traffic as 502s. Now the failed connect marks it down and is retried elsewhere."""
    fake = FakeUpstream()
    async with gateway([dead_url(), fake], saturation=CONCURRENCY) as (gw, client):
        statuses = []
        for _ in range(20):
            async with client.post(CHAT, data=BODY) as r:
                statuses.append(r.status)
        assert statuses == [200] * 20
        assert len(fake.requests) == 20
        dead, live = backends(gw)
        assert not dead.healthy
        assert live.healthy
        assert gw.pools["default"].controller.statistics().in_flight == 0
        assert dead.in_flight == 0
        assert live.in_flight == 0
        async with client.get("/metrics") as r:
            text = await r.text()
        prefix = "inference_extension_flow_control_backend_healthy"
        assert f'{prefix}{{backend="{dead.url}",pool="default"}} 0.0' in text
        assert f'{prefix}{{backend="{live.url}",pool="default"}} 1.0' in text


@pytest.mark.asyncio
async def test_a_failed_connect_is_retried_once_and_only_on_another_backend() -> None:
    """No byte reached the first backend, so the request may go to the second; with no
    other backend the client gets the 502."""
    async with gateway([dead_url()], saturation=CONCURRENCY) as (gw, client):
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 502
        assert gw.pools["default"].controller.statistics().in_flight == 0


@pytest.mark.asyncio
async def test_readyz_reflects_passive_health() -> None:
    """Once its only backend failed to connect, the pool is not ready."""
    async with gateway([dead_url()], saturation=CONCURRENCY) as (_, client):
        async with client.get("/readyz") as r:
            assert r.status == 200
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 502
        async with client.get("/readyz") as r:
            assert r.status == 503
            problems = (await r.json())["problems"]
            assert "no usable backend" in problems[0]
            assert "127.0.0.1" not in problems[0]


@pytest.mark.asyncio
@pytest.mark.parametrize("saturation", [CONCURRENCY, UTILIZATION], ids=["concurrency", "util"])
async def test_a_5xx_burst_marks_a_backend_down_until_its_health_probe_passes(
    saturation: dict[str, Any],
) -> None:
    """failure_threshold consecutive 5xx take a backend out in every mode; /health is
    probed with backoff (never the healthy backend's) and a pass brings it back."""
    sick, well = FakeUpstream(), FakeUpstream()
    sick.mode = "500"
    sick.health_status = 503
    async with gateway([sick, well], saturation=saturation, pool={"health": FAST_HEALTH}) as (
        gw,
        client,
    ):
        bad, good = backends(gw)
        await eventually(lambda: good.scraped_at is not None or saturation is CONCURRENCY)
        statuses = []
        for _ in range(6):
            async with client.post(CHAT, data=BODY) as r:
                statuses.append(r.status)
        assert statuses.count(502) == 3  # then the sick one is out
        assert len(sick.requests) == 3
        assert not bad.healthy
        await eventually(lambda: sick.health_probes >= 2)
        assert not bad.healthy  # its /health still fails
        sick.mode, sick.health_status = "ok", 200
        await eventually(lambda: bad.healthy)
        assert well.health_probes == 0


@pytest.mark.asyncio
async def test_resets_count_toward_the_threshold() -> None:
    """A backend that accepts and then drops every connection is taken out after
    failure_threshold resets; the request is not retried (bytes may have been sent)."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    dropping = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    well = FakeUpstream()
    try:
        async with gateway(
            [dropping, well], saturation=CONCURRENCY, pool={"health": FAST_HEALTH}
        ) as (gw, client):
            statuses = []
            for _ in range(5):
                async with client.post(CHAT, data=BODY) as r:
                    statuses.append(r.status)
            assert statuses == [502, 502, 502, 200, 200]
            bad = backends(gw)[0]
            assert not bad.healthy
            assert bad.health_error is not None  # a reset, then failed probes
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_wrong_backend_url_answers_no_endpoints_promptly() -> None:
    """With defaults (default_ttl 30 s), a pool whose only backend refuses connections
    answers no_endpoints, not queue_timeout after 30 s, and says so."""
    async with gateway([dead_url()], saturation=UTILIZATION) as (gw, client):
        await eventually(lambda: not gw.pools["default"].detector.has_endpoints())
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 503
            error = (await r.json())["error"]
            assert error["code"] == "no_endpoints"
            assert "no usable backend" in error["message"] or "no backend" in error["message"]


@pytest.mark.asyncio
async def test_a_backend_without_metrics_answers_no_endpoints_under_fail_closed() -> None:
    """A wrong base path (or metrics_path) answers /metrics with 404: under fail-closed
    that backend can never be scored, so it is no endpoint, not a 30 s queue_timeout."""
    fake = FakeUpstream()
    fake.metrics_status = 404
    async with gateway([fake], saturation=UTILIZATION, flow_control={"default_ttl": 20}) as (
        gw,
        client,
    ):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "no_endpoints"
        async with client.get("/readyz") as r:
            assert "metrics" in (await r.json())["problems"][0]
        assert gw.pools["default"].detector.backends[backends(gw)[0].url].last_error


@pytest.mark.asyncio
async def test_a_wrong_backend_url_in_concurrency_mode_answers_no_endpoints_after_one_502() -> None:
    async with gateway([dead_url()], saturation=CONCURRENCY) as (_, client):
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 502
        async with client.post(CHAT, data=BODY) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "no_endpoints"


# -- the detector's bookkeeping ----------------------------------------------------------


def _detector(urls: list[str]) -> tuple[ConcurrencyDetector, list[tuple[str, float]]]:
    detector = ConcurrencyDetector(urls, ConcurrencySettings(type="concurrency"), lambda: 0.0)
    probes: list[tuple[str, float]] = []
    detector.set_prober(lambda b, delay: probes.append((b.url, delay)))
    return detector, probes


class _Ticket:
    assignment: Any = None


def test_rebind_moves_the_in_flight_count_to_another_usable_backend() -> None:
    detector, _ = _detector(["http://a", "http://b", "http://c"])
    a, b, c = detector.backends.values()
    c.healthy = False
    ticket: Any = _Ticket()
    assert not detector.is_saturated()
    detector.on_dispatch(ticket)
    assert ticket.assignment.backend is a
    detector.upstream_failed(a, "connect", "refused")
    assert detector.rebind(ticket) is b
    assert (a.in_flight, b.in_flight) == (0, 1)
    detector.upstream_failed(b, "connect", "refused")
    assert detector.rebind(ticket) is None  # nothing usable is left
    detector.on_release(ticket)
    assert (a.in_flight, b.in_flight, c.in_flight) == (0, 0, 0)


def test_5xx_count_only_when_consecutive_and_probes_back_off() -> None:
    detector, probes = _detector(["http://a"])
    (a,) = detector.backends.values()
    threshold = detector.health.failure_threshold
    for _ in range(threshold - 1):
        detector.upstream_failed(a, "status", "HTTP 500")
    detector.upstream_succeeded(a)
    for _ in range(threshold - 1):
        detector.upstream_failed(a, "status", "HTTP 500")
    assert a.healthy and detector.has_endpoints()
    detector.upstream_failed(a, "status", "HTTP 500")
    assert not a.healthy and not detector.has_endpoints()
    for _ in range(8):
        detector.probe_failed(a, "HTTP 503")
    delays = [d for _, d in probes]
    assert delays[0] == detector.health.probe_backoff
    assert delays[1] == 2 * delays[0]
    assert max(delays) == detector.health.max_probe_backoff
    detector.probe_succeeded(a)
    assert a.healthy and detector.has_endpoints()
    detector.upstream_failed(a, "connect", "refused")  # one failed connect is enough
    assert not a.healthy
    assert probes[-1][1] == detector.health.probe_backoff  # the backoff starts over


def test_a_ticket_without_assignment_is_not_rebound() -> None:
    detector, _ = _detector(["http://a"])
    ticket: Any = _Ticket()
    assert detector.rebind(ticket) is None


def test_a_backend_whose_scrapes_connect_again_is_probed_at_once() -> None:
    """After a long outage the backoff is at its maximum; a scrape that connects again is
    news enough to probe now, once (not at every scrape)."""
    settings = UtilizationSettings()
    detector = UtilizationDetector(["http://a"], settings, lambda: 0.0)
    probes: list[float] = []
    detector.set_prober(lambda _, delay: probes.append(delay))
    (a,) = detector.backends.values()
    detector.upstream_failed(a, "connect", "refused")
    detector.scrape_failed(a, "refused", reachable=False)
    for _ in range(6):
        detector.probe_failed(a, "refused")
    assert probes[-1] == detector.health.max_probe_backoff
    metrics = BackendMetrics(0.0, 0.0, 0.0)
    detector.scrape_succeeded(a, metrics, detector.scrape_started(a))
    assert probes[-1] == 0.0
    count = len(probes)
    detector.scrape_succeeded(a, metrics, detector.scrape_started(a))
    assert len(probes) == count
    assert not a.healthy  # only the probe puts it back
