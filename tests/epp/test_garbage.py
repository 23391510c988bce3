"""An ext_proc exchange leaves no reference cycle behind (see tests/gateway/test_garbage.py):
picks, answers, refusals, expiries and cancellations are freed by reference counting."""

from __future__ import annotations

import asyncio

import pytest

from ..gateway.test_garbage import collected
from .conftest import BODY, A, eventually, make_config, queued, stack


@pytest.mark.asyncio
async def test_picks_refusals_expiries_and_cancels_leave_no_reference_cycles() -> None:
    config = make_config([A], max_in_flight=1, flow_control={"bands": {"0": {"max_requests": 1}}})
    async with stack(config) as (running, envoy):
        warm = envoy.open()
        await warm.request(BODY)
        await warm.respond()
        await warm.finish()
        with collected() as cycles:
            for _ in range(3):
                holder = envoy.open()
                await holder.request(BODY)
                waiter = envoy.open()
                waiting = asyncio.create_task(waiter.request(BODY))
                await eventually(lambda: queued(running) == 1)
                refused = envoy.open()
                assert (await refused.request(BODY)).status == 429
                await refused.finish()
                waiter.cancel()  # leaves while queued
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                await eventually(lambda: queued(running) == 0)
                expired = envoy.open()
                answer = await expired.request(BODY, headers={"x-sluicegate-ttl-ms": "10"})
                assert answer.status == 503
                await expired.finish()
                await holder.respond()
                await holder.finish()
            await asyncio.sleep(0.05)
        assert cycles.found == [], sorted(set(cycles.found))
