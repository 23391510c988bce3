"""`FlowController.requeue_and_wait`, in virtual time: the preempted request waits again."""

from __future__ import annotations

import asyncio

import pytest

import sluicegate as sg

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_a_preempted_request_gives_its_slot_to_the_higher_one_and_resumes_first() -> None:
    gate = sg.ConcurrencyLimit(1)
    ctl = sg.FlowController(sg.FlowControlConfig(demand_headroom=False), saturation=gate)
    async with ctl:
        low = await ctl.enqueue_and_wait(sg.FlowKey("batch", -1))
        later_low = asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey("batch", -1)))
        high = asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey("chat", 10)))
        await asyncio.sleep(0)
        assert not high.done()
        again = asyncio.ensure_future(ctl.requeue_and_wait(low))
        high_ticket = await high
        assert gate.in_flight == 1 and not again.done()
        await asyncio.sleep(1.0)
        high_ticket.release()
        assert await again is low  # ahead of the later low request of its flow
        assert low.requeues == 1 and ctl.requeued == 1
        assert not later_low.done()
        low.release()
        (await later_low).release()
        stats = ctl.statistics()
        assert stats.dispatched == 3 and stats.in_flight == 0 and stats.queued_requests == 0


async def test_requeue_refuses_a_ticket_not_in_flight() -> None:
    ctl = sg.FlowController(saturation=sg.ConcurrencyLimit(1))
    async with ctl:
        ticket = await ctl.enqueue_and_wait(sg.FlowKey("a"))
        ticket.release()
        with pytest.raises(ValueError, match="not in flight"):
            await ctl.requeue_and_wait(ticket)


async def test_cancelling_a_requeued_waiter_leaves_nothing_behind() -> None:
    gate = sg.ConcurrencyLimit(1)
    ctl = sg.FlowController(sg.FlowControlConfig(demand_headroom=False), saturation=gate)
    async with ctl:
        low = await ctl.enqueue_and_wait(sg.FlowKey("batch", -1))
        high = asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey("chat", 10)))
        await asyncio.sleep(0)
        again = asyncio.ensure_future(ctl.requeue_and_wait(low))
        (await high).release()
        again.cancel()
        with pytest.raises(asyncio.CancelledError):
            await again
        stats = ctl.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0 and gate.in_flight == 0
