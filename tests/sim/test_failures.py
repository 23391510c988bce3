"""Failure injection (each type), the admin endpoint, frozen metrics, metric types."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FAST, Sim, start

pytestmark = pytest.mark.asyncio

BODY = {"prompt": "hello", "max_tokens": 6}


def always(kind: str) -> dict[str, object]:
    """The admin body that makes every request fail with `kind`."""
    return {"failure_injection_rate": 100, "failure_types": [kind]}


async def configure(sim: Sim, settings: dict[str, object]) -> dict[str, object]:
    """POST /sim/config and return the settings it reports."""
    async with sim.http.post(sim.url + "/sim/config", json=settings) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, object] = await resp.json()
        return result


async def test_http_500_and_429_failures(sim: Sim) -> None:
    """Injected HTTP failures reach the openai client as its own error types."""
    await configure(sim, always("http-500"))
    with pytest.raises(openai.InternalServerError):
        await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=1)
    await configure(sim, always("http-429"))
    with pytest.raises(openai.RateLimitError):
        await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=1)
    await configure(sim, {"failure_injection_rate": 0})
    await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=1)
    assert sim.app.engine.statistics().running == 0


async def test_drop_cuts_the_stream_and_frees_the_slot(sim: Sim) -> None:
    """`drop` sends half the tokens, then the connection closes without [DONE]."""
    await configure(sim, always("drop"))
    received: list[bytes] = []

    async def read_stream() -> None:
        async with sim.http.post(
            sim.url + "/v1/completions", json={**BODY, "stream": True}
        ) as resp:
            assert resp.status == 200
            async for line in resp.content:
                received.append(line)  # noqa: PERF401 - keeps the lines read before the error

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_stream()
    assert b"data: [DONE]\n" not in received
    assert sum(line.startswith(b"data: ") for line in received) == 3
    await sim.until(lambda s: s.running == 0)


async def test_drop_cuts_a_non_streamed_body(sim: Sim) -> None:
    """A non-streamed `drop` announces a body and closes half way through it."""
    await configure(sim, always("drop"))
    with pytest.raises(openai.APIConnectionError):
        await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=3)


async def test_stall_holds_a_slot_and_sends_nothing(sim: Sim) -> None:
    """`stall` occupies a batch slot, sends no token, and frees it when the client leaves."""
    await configure(sim, always("stall"))
    async with sim.http.post(sim.url + "/v1/completions", json={**BODY, "stream": True}) as resp:
        assert resp.status == 200
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await resp.content.readline()
        assert sim.app.engine.statistics().running == 1
    await sim.until(lambda s: s.running == 0)


async def test_failure_rate_is_a_percentage_and_seeded() -> None:
    """At 50 %, about half fail, and the same seed fails the same requests."""

    async def outcomes() -> list[int]:
        async with start(
            FAST.replace(failure_injection_rate=50.0, failure_types=("http-500",))
        ) as sim:
            statuses = []
            for _ in range(40):
                async with sim.http.post(sim.url + "/v1/completions", json=BODY) as resp:
                    statuses.append(resp.status)
            return statuses

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert 10 <= first.count(500) <= 30
    assert set(first) == {200, 500}


async def test_admin_endpoint_validates_and_reports(sim: Sim) -> None:
    """GET /sim/config reports settings; bad values are a 400 and change nothing."""
    async with sim.http.get(sim.url + "/sim/config") as resp:
        before = await resp.json()
    assert before == {
        "failure_injection_rate": 0.0,
        "failure_types": ["http-500", "http-429", "drop", "stall"],
        "freeze_metrics": False,
    }
    for bad in ({"failure_injection_rate": 101}, {"failure_types": ["boom"]}, [1]):
        async with sim.http.post(sim.url + "/sim/config", json=bad) as resp:
            assert resp.status == 400
    async with sim.http.get(sim.url + "/sim/config") as resp:
        assert await resp.json() == before


async def scrape(sim: Sim) -> str:
    """GET /metrics as text."""
    async with sim.http.get(sim.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
        return await resp.text()


async def test_freeze_metrics_serves_a_stale_snapshot(sim: Sim) -> None:
    """While frozen, /metrics does not change; unfreezing shows the live values again."""
    await configure(sim, {"freeze_metrics": True})
    frozen = await scrape(sim)
    await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=3)
    assert await scrape(sim) == frozen
    await configure(sim, {"freeze_metrics": False})
    assert await scrape(sim) != frozen
    sim.app.freeze_metrics(True)  # the Python switch does the same
    assert await scrape(sim) == await scrape(sim)


async def test_metric_names_types_and_labels(sim: Sim) -> None:
    """The vLLM metric names exist with the right types and a model_name label."""
    await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=3)
    families = {f.name: f for f in text_string_to_metric_families(await scrape(sim))}
    expected = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:gpu_cache_usage_perc": "gauge",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_success": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:num_preemptions": "counter",
        "sluicegate_sim_schedule_lag_seconds": "histogram",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
        assert all(s.labels["model_name"] == "sim-model" for s in families[name].samples)
    generated = families["vllm:generation_tokens"].samples[0]
    assert (generated.name, generated.value) == ("vllm:generation_tokens_total", 3.0)
    ttft = {s.name: s.value for s in families["vllm:time_to_first_token_seconds"].samples}
    assert ttft["vllm:time_to_first_token_seconds_count"] == 1.0
