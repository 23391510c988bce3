"""Subset hints: pick only from the hinted endpoints, judged per endpoint."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from .conftest import BODY, A, B, C, backend_in_flight, eventually, make_config, stack


@pytest.mark.asyncio
async def test_hint_restricts_the_pick() -> None:
    async with stack(make_config([A, B, C])) as (_running, envoy):
        for _ in range(5):
            req = envoy.open()
            decision = await req.request(BODY, subset=[C])
            assert decision.endpoint == decision.metadata_endpoint == C
            await req.respond()
            await req.finish()


@pytest.mark.asyncio
async def test_hint_naming_every_endpoint_uses_the_pool_controller() -> None:
    async with stack(make_config([A, B])) as (running, envoy):
        req = envoy.open()
        decision = await req.request(BODY, subset=[A, B])
        assert decision.endpoint in {A, B}
        assert len(running.picker.subsets) == 0
        await req.respond()
        await req.finish()


@pytest.mark.parametrize("hint", [[], ["192.0.2.1:1"]])
@pytest.mark.asyncio
async def test_empty_or_foreign_hint_is_a_503(hint: list[str]) -> None:
    async with stack(make_config([A, B])) as (_running, envoy):
        req = envoy.open()
        decision = await req.request(BODY, subset=hint)
        await req.finish()
    assert decision.status == 503
    assert orjson.loads(decision.body)["error"]["code"] == "no_endpoints"


@pytest.mark.asyncio
async def test_hinted_request_waits_for_its_endpoint_never_overflows() -> None:
    """A is full, B is free: a request hinted to A waits; it never goes to B."""
    async with stack(make_config([A, B], max_in_flight=1)) as (running, envoy):
        on_a = envoy.open()
        assert (await on_a.request(BODY, subset=[A])).endpoint == A
        hinted = envoy.open()
        waiting = asyncio.create_task(hinted.request(BODY, subset=[A]))

        def subset_queued() -> int:
            return sum(s["queued_requests"] for s in running.picker.subsets.describe())

        await eventually(lambda: subset_queued() == 1)
        # B is free, and an unhinted request takes it at once: the hinted one still waits.
        free = envoy.open()
        assert (await free.request(BODY)).endpoint == B
        assert not waiting.done()
        assert backend_in_flight(running) == {A: 1, B: 1}
        await on_a.respond()  # A frees: the hinted request gets it
        decision = await waiting
        assert decision.endpoint == A
        for req in (on_a, hinted, free):
            if req is not on_a:
                await req.respond()
            await req.finish()
        await eventually(lambda: running.picker.streams == 0)
        assert backend_in_flight(running) == {A: 0, B: 0}


@pytest.mark.asyncio
async def test_release_through_a_subset_wakes_the_pool_queue() -> None:
    """A subset-dispatched request frees its slot: the pool's queued request gets it."""
    async with stack(make_config([A, B], max_in_flight=1)) as (running, envoy):
        on_a = envoy.open()
        assert (await on_a.request(BODY, subset=[A])).endpoint == A
        on_b = envoy.open()
        assert (await on_b.request(BODY, subset=[B])).endpoint == B
        unhinted = envoy.open()
        waiting = asyncio.create_task(unhinted.request(BODY))
        pool = running.picker.pools["default"].controller
        await eventually(lambda: pool.statistics().queued_requests == 1)
        await on_b.respond()
        assert (await waiting).endpoint == B
        for req in (on_a, unhinted):
            await req.respond()
        for req in (on_a, on_b, unhinted):
            await req.finish()
        assert backend_in_flight(running) == {A: 0, B: 0}


@pytest.mark.asyncio
async def test_cancelled_hinted_request_leaves_its_subset_queue() -> None:
    async with stack(make_config([A, B], max_in_flight=1)) as (running, envoy):
        on_a = envoy.open()
        await on_a.request(BODY, subset=[A])
        hinted = envoy.open()
        waiting = asyncio.create_task(hinted.request(BODY, subset=[A]))

        def subset_queued() -> int:
            return sum(s["queued_requests"] for s in running.picker.subsets.describe())

        await eventually(lambda: subset_queued() == 1)
        hinted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await eventually(lambda: subset_queued() == 0)
        await on_a.respond()
        await on_a.finish()
        await eventually(lambda: running.picker.streams == 0)
        assert backend_in_flight(running) == {A: 0, B: 0}
