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
    request ends 429 `displaced` (EvictedDisplaced) with the position; no Retry-After,
    which the gateway sends only as a promise (`x-sluicegate-retry` says why)."""
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
    """429 `deadline_unreachable` with the position and the estimated wait the controller
    computed for it; a Retry-After given (`retry_reservations: false`) is an estimate."""
    exc = sg.DeadlineUnreachableError("too late", wait_s=3.2, position=41)
    status, body, headers = error_reply(exc, queue_ms=0.0, retry_after=4)
    found = dict(headers)
    assert status == 429
    assert orjson.loads(body)["error"]["code"] == "deadline_unreachable"
    assert found[b"x-sluicegate-outcome"] == b"RejectedDeadline"
    assert found[b"retry-after"] == b"4"
    assert found[b"x-sluicegate-retry"] == b"estimate"
    _, body, headers = error_reply(exc, queue_ms=0.0)  # retry_reservations on: no promise
    found = dict(headers)
    assert b"retry-after" not in found and found[b"x-sluicegate-retry"] == b"deadline"
    assert orjson.loads(body)["error"]["retry"] == "deadline"
    assert found[b"x-sluicegate-queue-position"] == b"41"
    assert found[b"x-sluicegate-queue-eta-ms"] == b"3200"
