"""Displacement and queue feedback through the gateway, against a scriptable upstream."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import sluicegate as sg
from sluicegate.gateway._errors import error_reply

from .conftest import eventually
from .test_proxy import CHAT, chat, stack, stats

OBJECTIVES = [{"name": "batch", "priority": -1}, {"name": "chat", "priority": 10}]


@pytest.mark.asyncio
async def test_displaced_request_is_429_with_its_position_and_no_promise() -> None:
    """A full global queue of batch work makes room for a chat request: the newest batch
    request ends 429 `displaced` (EvictedDisplaced) with the position; no Retry-After
    while the pool has no drain estimate (nothing completed yet: nothing to advise)."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    fc = {"max_requests": 1}
    async with stack(saturation=sat, flow_control=fc, objectives=OBJECTIVES) as (gw, fake, client):
        fake.hold = asyncio.Event()
        batch = {"x-gateway-inference-objective": "batch"}
        running = asyncio.ensure_future(client.post(CHAT, data=chat(), headers=batch))
        await eventually(lambda: len(fake.requests) == 1)
        displaced = asyncio.ensure_future(client.post(CHAT, data=chat(), headers=batch))
        await eventually(lambda: stats(gw).queued_requests == 1)
        vip = asyncio.ensure_future(
            client.post(CHAT, data=chat(), headers={"x-gateway-inference-objective": "chat"})
        )
        async with await displaced as r:
            assert r.status == 429
            assert "retry-after" not in r.headers
            assert r.headers["x-sluicegate-retry"] == "displaced"
            assert r.headers["x-sluicegate-outcome"] == "EvictedDisplaced"
            assert int(r.headers["x-sluicegate-queue-position"]) >= 1
            error = (await r.json())["error"]
            assert (error["code"], error["retry"]) == ("displaced", "displaced")
        fake.hold.set()
        for task in (running, vip):
            async with await task as r:
                assert r.status == 200
        outcomes = {o.value: n for o, n in stats(gw).outcomes.items()}
        assert outcomes["EvictedDisplaced"] == 1
        metrics = await (await client.get("/metrics")).text()
        assert 'outcome="EvictedDisplaced"' in metrics


@pytest.mark.asyncio
async def test_hopeless_slo_is_429_with_an_estimated_retry_after() -> None:
    """Once the pool has a drain rate, a request whose `x-slo-ttft-ms` cannot be met
    behind the queue is refused at once: 429 RejectedDeadline with a Retry-After (an
    estimate: `x-sluicegate-retry: deadline`, no `x-sluicegate-retry-reserved`)."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with stack(saturation=sat) as (gw, fake, client):
        for _ in range(10):  # completions: the pool's drain rate becomes known
            async with client.post(CHAT, data=chat()) as r:
                assert r.status == 200
        fake.hold = asyncio.Event()
        queued = [asyncio.ensure_future(client.post(CHAT, data=chat())) for _ in range(6)]
        await eventually(lambda: stats(gw).queued_requests == 5)
        async with client.post(CHAT, data=chat(), headers={"x-slo-ttft-ms": "1"}) as r:
            assert r.status == 429
            assert r.headers["x-sluicegate-outcome"] == "RejectedDeadline"
            assert r.headers["x-sluicegate-retry"] == "deadline"
            assert "x-sluicegate-retry-reserved" not in r.headers
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-sluicegate-queue-position"] == "6"
        fake.hold.set()
        for task in queued:
            async with await task as r:
                assert r.status == 200


@pytest.mark.asyncio
async def test_displacement_off_refuses_the_arrival() -> None:
    sat = {"type": "concurrency", "max_in_flight": 1}
    fc = {"max_requests": 1, "displacement": False}
    async with stack(saturation=sat, flow_control=fc, objectives=OBJECTIVES) as (gw, fake, client):
        fake.hold = asyncio.Event()
        batch = {"x-gateway-inference-objective": "batch"}
        running = asyncio.ensure_future(client.post(CHAT, data=chat(), headers=batch))
        await eventually(lambda: len(fake.requests) == 1)
        queued = asyncio.ensure_future(client.post(CHAT, data=chat(), headers=batch))
        await eventually(lambda: stats(gw).queued_requests == 1)
        headers = {"x-gateway-inference-objective": "chat"}
        async with client.post(CHAT, data=chat(), headers=headers) as r:
            assert r.status == 429
            assert r.headers["x-sluicegate-outcome"] == "RejectedCapacity"
            assert r.headers["x-sluicegate-queue-position"] == "1"
        fake.hold.set()
        for task in (running, queued):
            async with await task as r:
                assert r.status == 200


def test_early_rejection_answer_carries_its_position_and_estimate() -> None:
    """429 `deadline_unreachable` with the position, the estimated wait the controller
    computed for it, and its Retry-After: when that work will have drained to within
    its deadline (an estimate: `x-sluicegate-retry: deadline`, never `reserved`)."""
    exc = sg.DeadlineUnreachableError("too late", wait_s=3.2, position=41, retry_after=3)
    status, body, headers = error_reply(exc, queue_ms=0.0, retry_after=exc.retry_after)
    found = dict(headers)
    assert status == 429
    assert orjson.loads(body)["error"]["code"] == "deadline_unreachable"
    assert found[b"x-sluicegate-outcome"] == b"RejectedDeadline"
    assert found[b"retry-after"] == b"3"
    assert b"x-sluicegate-retry-reserved" not in found
    assert found[b"x-sluicegate-retry"] == b"deadline"
    assert orjson.loads(body)["error"]["retry"] == "deadline"
    assert found[b"x-sluicegate-queue-position"] == b"41"
    assert found[b"x-sluicegate-queue-eta-ms"] == b"3200"
