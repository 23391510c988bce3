"""Operations: metrics, debug, gRPC health, token accounting, drain and live reload."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluicegate.epp import EXT_PROC_SERVICE

from .conftest import BODY, A, body, eventually, in_flight, make_config, queued, stack

if TYPE_CHECKING:
    from pathlib import Path

    from sluicegate.epp import RunningPicker

PREFIX = "inference_extension_flow_control_"


async def _get(running: RunningPicker, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(running.metrics_url + path) as r:
        return r.status, await r.read()


@pytest.mark.asyncio
async def test_metrics_have_the_gateway_names_and_count_tokens() -> None:
    async with stack() as (running, envoy):
        req = envoy.open()
        await req.request(BODY, headers={"x-gateway-inference-fairness-id": "tenant-a"})
        await req.respond([b'{"usage":{"prompt_tokens":11,"completion_tokens":22}}'])
        await req.finish()
        status, text = await _get(running, "/metrics")
    assert status == 200
    for name in (
        "request_queue_duration_seconds_bucket",
        "requests_total",
        "queue_size",
        "pool_saturation",
        "backend_in_flight",
        "dispatch_cycle_duration_seconds_bucket",
        "gateway_added_latency_seconds_bucket",
        "epp_decision_duration_seconds_bucket",
    ):
        assert f"{PREFIX}{name}".encode() in text, name
    assert (
        f'{PREFIX}flow_tokens_total{{fairness_id="tenant-a",kind="output",priority="0"}} 22.0'
    ).encode() in text
    assert (
        f'{PREFIX}flow_tokens_total{{fairness_id="tenant-a",kind="input",priority="0"}} 11.0'
    ).encode() in text


@pytest.mark.asyncio
async def test_streamed_response_events_are_counted() -> None:
    events = [b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' for _ in range(5)]
    async with stack() as (running, envoy):
        req = envoy.open()
        await req.request(body(stream=True), headers={"x-gateway-inference-fairness-id": "s"})
        replies = await req.respond([*events, b"data: [DONE]\n\n"])
        await req.finish()
        assert replies.forwarded == b"".join([*events, b"data: [DONE]\n\n"])
        _, text = await _get(running, "/metrics")
    assert (
        f'{PREFIX}flow_tokens_total{{fairness_id="s",kind="output",priority="0"}} 5.0'
    ).encode() in text


@pytest.mark.asyncio
async def test_debug_document_shows_pools_subsets_and_decisions() -> None:
    async with stack(make_config([A, "127.0.0.3:8000"])) as (running, envoy):
        req = envoy.open()
        await req.request(BODY, subset=[A])
        status, raw = await _get(running, "/debug/flowcontrol")
        await req.respond()
        await req.finish()
        _, ready = await _get(running, "/readyz")
    assert status == 200
    doc = orjson.loads(raw)
    assert doc["pools"]["default"]["backends"][0]["url"] == f"http://{A}"
    assert doc["subsets"][0]["endpoints"] == [f"http://{A}"]
    assert doc["subsets"][0]["in_flight"] == 1
    assert doc["open_streams"] == 1
    assert doc["decision_ms"]["samples"] == 1
    assert orjson.loads(ready)["ready"] is True


@pytest.mark.asyncio
async def test_grpc_health_serves_then_stops_on_drain() -> None:
    async with (
        stack() as (running, _envoy),
        grpc.aio.insecure_channel(running.grpc_target) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", EXT_PROC_SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await running.drain()
        for service in ("", EXT_PROC_SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.asyncio
async def test_drain_answers_queued_requests_503_and_in_flight_ones_finish() -> None:
    async with stack(make_config([A], max_in_flight=1)) as (running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        req = envoy.open()
        waiting = asyncio.create_task(req.request(BODY))
        await eventually(lambda: queued(running) == 1)
        await running.drain()
        decision = await waiting
        assert decision.status == 503
        assert orjson.loads(decision.body)["error"]["code"] == "shutting_down"
        await req.finish()
        # The request in flight continues and still releases at its end.
        await holder.respond()
        await holder.finish()
        assert in_flight(running) == 0
        late = envoy.open()
        refused = await late.request(BODY)
        await late.finish()
        assert refused.status == 503
        _, ready = await _get(running, "/readyz")
        assert orjson.loads(ready)["ready"] is False


@pytest.mark.asyncio
async def test_reload_raises_the_limit_and_dispatches_the_waiting(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_yaml(max_in_flight=1), encoding="utf-8")
    from sluicegate.gateway import load_config

    async with stack(load_config(path), config_path=path) as (running, envoy):
        holder = envoy.open()
        await holder.request(BODY)
        req = envoy.open()
        waiting = asyncio.create_task(req.request(BODY))
        await eventually(lambda: queued(running) == 1)
        path.write_text(_yaml(max_in_flight=2), encoding="utf-8")
        assert running.picker.reload_from_file()
        assert (await waiting).endpoint == A
        path.write_text("pools: [", encoding="utf-8")
        assert not running.picker.reload_from_file()  # refused; the running config stays
        for r in (holder, req):
            await r.respond()
            await r.finish()


def _yaml(*, max_in_flight: int) -> str:
    return (
        "server: {host: 127.0.0.1}\n"
        "pools:\n"
        "  - name: default\n"
        f"    backends: ['http://{A}']\n"
        f"    saturation: {{type: concurrency, max_in_flight: {max_in_flight}}}\n"
    )


_OBJECTIVE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata:
  name: {name}
spec:
  priority: {priority}
  poolRef:
    name: my-pool
"""


@pytest.mark.asyncio
async def test_objective_manifests_set_priorities_and_reload(tmp_path: Path) -> None:
    (tmp_path / "lo.yaml").write_text(_OBJECTIVE.format(name="lo", priority=0), "utf-8")
    (tmp_path / "hi.yaml").write_text(_OBJECTIVE.format(name="hi", priority=-5), "utf-8")
    config = make_config([A], max_in_flight=1)
    async with stack(config, objectives_dir=tmp_path) as (running, envoy):
        assert running.picker.objectives == {"lo": 0, "hi": -5}
        # 'hi' is a misnomer until the manifest changes: raise it above 'lo' live.
        (tmp_path / "hi.yaml").write_text(_OBJECTIVE.format(name="hi", priority=7), "utf-8")
        assert running.picker.reload_objectives()
        bands = running.picker.pools["default"].controller.statistics().bands
        assert 7 in bands
        holder = envoy.open()
        await holder.request(BODY)
        order: list[str] = []

        async def one(objective: str) -> None:
            req = envoy.open()
            await req.request(BODY, headers={"x-gateway-inference-objective": objective})
            order.append(objective)
            await req.respond()
            await req.finish()

        low = asyncio.create_task(one("lo"))
        await eventually(lambda: queued(running) == 1)
        high = asyncio.create_task(one("hi"))
        await eventually(lambda: queued(running) == 2)
        await holder.respond()
        await holder.finish()
        await asyncio.gather(low, high)
        assert order == ["hi", "lo"]
        (tmp_path / "bad.yaml").write_text("kind: InferenceObjective\nmetadata: {}\n", "utf-8")
        assert not running.picker.reload_objectives()
        assert running.picker.objectives == {"lo": 0, "hi": 7}


@pytest.mark.asyncio
async def test_metrics_and_debug_need_the_token_when_one_is_set() -> None:
    config = make_config([A], server={"host": "127.0.0.1", "auth_token": "s3cret"})
    async with stack(config) as (running, _envoy), aiohttp.ClientSession() as session:
        for path in ("/metrics", "/debug/flowcontrol"):
            async with session.get(running.metrics_url + path) as r:
                assert r.status == 401
            headers = {"Authorization": "Bearer s3cret"}
            async with session.get(running.metrics_url + path, headers=headers) as r:
                assert r.status == 200
        async with session.get(running.metrics_url + "/healthz") as r:
            assert r.status == 200
