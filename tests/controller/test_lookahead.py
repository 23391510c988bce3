"""Displacement and early rejection through the asyncio shell, in virtual time."""

from __future__ import annotations

import asyncio
import math

import pytest

import sluicegate as sg

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_displaced_waiter_gets_displaced_error() -> None:
    """The displaced request's waiter raises DisplacedError (429); the arrival waits
    and is dispatched first when a slot frees."""
    gate = sg.ConcurrencyLimit(1)
    ctl = sg.FlowController(sg.FlowControlConfig(max_requests=1), saturation=gate)
    async with ctl:
        blocker = await ctl.enqueue_and_wait(sg.FlowKey("blocker"))
        low = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("low", -1)))
        await asyncio.sleep(0)
        high = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("high", 5)))
        await asyncio.sleep(0)
        with pytest.raises(sg.DisplacedError) as caught:
            await low
        assert caught.value.status_hint == 429
        assert caught.value.retry_after is None  # no drain rate yet: no estimate
        assert not high.done()
        blocker.release()
        (await high).release()
        stats = ctl.statistics()
        assert stats.outcomes[sg.Outcome.EVICTED_DISPLACED] == 1
        assert stats.queued_requests == 0 and stats.in_flight == 0


async def test_hopeless_deadline_is_refused_without_waiting() -> None:
    """Once the pool has a drain rate, a TTL far shorter than the queue ahead is refused
    at once (no wait), while a long one queues."""
    gate = sg.ConcurrencyLimit(1)
    ctl = sg.FlowController(sg.FlowControlConfig(default_ttl=None), saturation=gate)
    loop = asyncio.get_running_loop()
    async with ctl:
        for _ in range(10):  # one request per second: the drain rate is known
            async with ctl.admit(sg.FlowKey("warm")):
                await asyncio.sleep(0.3)
        blocker = await ctl.enqueue_and_wait(sg.FlowKey("blocker"))
        waiting = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("q"))) for _ in range(20)]
        await asyncio.sleep(0)
        start = loop.time()
        with pytest.raises(sg.DeadlineUnreachableError) as caught:
            await ctl.enqueue_and_wait(sg.FlowKey("late"), ttl=0.5)
        assert loop.time() == start
        assert caught.value.position == 21
        # When the work ahead will have drained to within its TTL, in whole seconds.
        assert caught.value.retry_after == math.ceil(caught.value.wait_s - 0.5)
        blocker.release()
        for task in waiting:
            (await task).release()
        assert ctl.statistics().outcomes[sg.Outcome.REJECTED_DEADLINE] == 1


async def test_displaced_waiter_is_advised_when_its_band_may_take_it() -> None:
    """Once the pool has a drain rate, DisplacedError carries the estimated drain time of
    what waits at its priority and above (whole seconds, at least 1)."""
    gate = sg.ConcurrencyLimit(1)
    ctl = sg.FlowController(sg.FlowControlConfig(max_requests=3), saturation=gate)
    async with ctl:
        for _ in range(10):  # one request per second: the drain rate is known
            async with ctl.admit(sg.FlowKey("warm")):
                await asyncio.sleep(0.3)
        blocker = await ctl.enqueue_and_wait(sg.FlowKey("blocker"))
        low = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("low", -1))) for _ in range(3)]
        await asyncio.sleep(0)
        high = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("high", 5)))
        await asyncio.sleep(0)
        with pytest.raises(sg.DisplacedError) as caught:
            await low[2]  # the newest of the lowest band
        assert caught.value.retry_after is not None
        assert 1 <= caught.value.retry_after <= 10
        blocker.release()
        (await high).release()
        for task in low[:2]:
            (await task).release()
