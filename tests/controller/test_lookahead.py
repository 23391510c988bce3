"""Displacement and early rejection through the asyncio shell, in virtual time."""

from __future__ import annotations

import asyncio

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
        blocker.release()
        for task in waiting:
            (await task).release()
        assert ctl.statistics().outcomes[sg.Outcome.REJECTED_DEADLINE] == 1
