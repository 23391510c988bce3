"""Tenant ceilings through the library's asyncio API (looptime virtual time)."""

from __future__ import annotations

import asyncio

import pytest

import sluicegate as sg

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_a_tenant_ceiling_through_the_controller() -> None:
    """team-a holds 2 at most; team-b's requests pass it; a release wakes team-a's next."""
    config = sg.FlowControlConfig(
        tenants={"team-a": sg.TenantLimits(max_in_flight=2, max_queued=3)}
    )
    gate = sg.ConcurrencyLimit(10)
    async with sg.FlowController(config, saturation=gate) as ctl:
        a = [asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey("team-a"))) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(sg.QueueFullError):
            await ctl.enqueue_and_wait(sg.FlowKey("team-a"))
        b = await ctl.enqueue_and_wait(sg.FlowKey("team-b"))
        assert sum(f.done() for f in a) == 2 and ctl.queued_requests() == 3
        first = next(f for f in a if f.done()).result()
        first.release()
        await asyncio.sleep(0)
        assert sum(f.done() for f in a) == 3 and ctl.queued_requests() == 2
        b.release()
        await asyncio.sleep(1.0)
        assert sum(f.done() for f in a) == 3  # team-b's release frees no team-a slot
        for f in a:
            if f.done():
                f.result().release()
        await asyncio.sleep(0)
        assert all(f.done() for f in a) and ctl.queued_requests() == 0
