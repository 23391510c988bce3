"""The asyncio shell, in virtual time (looptime): waiting, waking, timers, shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
import random

import pytest

import sluicegate as sg
from sluicegate.testing import ManualDetector

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


def _controller(
    config: sg.FlowControlConfig | None = None, limit: int = 1
) -> tuple[sg.FlowController, sg.ConcurrencyLimit]:
    gate = sg.ConcurrencyLimit(limit)
    return sg.FlowController(config, saturation=gate), gate


async def test_requests_before_start_and_after_close_are_refused() -> None:
    """Not running: ControllerClosedError (RejectedOther, 503), counted."""
    ctl, _ = _controller()
    with pytest.raises(sg.ControllerClosedError):
        await ctl.enqueue_and_wait(sg.FlowKey("a"))
    async with ctl:
        pass
    with pytest.raises(sg.ControllerClosedError):
        await ctl.enqueue_and_wait(sg.FlowKey("a"))
    assert ctl.statistics().outcomes[sg.Outcome.REJECTED_OTHER] == 2


async def test_admit_releases_the_slot_when_the_block_ends() -> None:
    """`async with ctl.admit(...)` holds one in-flight slot for the block."""
    ctl, gate = _controller()
    async with ctl:
        async with ctl.admit(sg.FlowKey("a", 7), size=10) as ticket:
            assert gate.in_flight == 1 and ticket.priority == 7
            assert ctl.statistics().bands[7].in_flight == 1
        assert gate.in_flight == 0 and ticket.released


async def test_waiters_resume_in_priority_order() -> None:
    """With one slot, queued requests resume highest band first, FCFS inside."""
    ctl, _ = _controller()
    order: list[str] = []
    async with ctl:
        blocker = await ctl.enqueue_and_wait(sg.FlowKey("blocker"))

        async def one(name: str, priority: int) -> None:
            async with ctl.admit(sg.FlowKey(name, priority)):
                order.append(name)
                await asyncio.sleep(1)

        tasks = [
            asyncio.create_task(one(n, p))
            for n, p in [("batch", -1), ("std1", 0), ("chat1", 10), ("std2", 0), ("chat2", 10)]
        ]
        await asyncio.sleep(0)
        assert ctl.statistics().queued_requests == 5
        blocker.release()
        await asyncio.gather(*tasks)
    assert order == ["chat1", "chat2", "std1", "std2", "batch"]


async def test_ttl_expiry_fails_the_waiter_at_its_deadline() -> None:
    """TTLExpiredError at arrival + ttl exactly (virtual time), capacity freed then."""
    ctl, _ = _controller(sg.FlowControlConfig(default_band=sg.BandConfig(max_requests=1)))
    loop = asyncio.get_running_loop()
    async with ctl:
        await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        start = loop.time()
        with pytest.raises(sg.TTLExpiredError, match="TTL"):
            await ctl.enqueue_and_wait(sg.FlowKey("a"), ttl=2.5)
        assert loop.time() == pytest.approx(start + 2.5, abs=1e-3)
        stats = ctl.statistics()
        assert stats.queued_requests == 0 and stats.outcomes[sg.Outcome.EVICTED_TTL] == 1
        with pytest.raises(sg.TTLExpiredError):
            await ctl.enqueue_and_wait(sg.FlowKey("b"), ttl=1.0)  # the slot was free again


async def test_default_ttl_applies() -> None:
    """A request naming no TTL waits the configured default."""
    ctl, _ = _controller(sg.FlowControlConfig(default_ttl=4.0))
    loop = asyncio.get_running_loop()
    async with ctl:
        await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        start = loop.time()
        with pytest.raises(sg.TTLExpiredError):
            await ctl.enqueue_and_wait(sg.FlowKey("a"))
        assert loop.time() == pytest.approx(start + 4.0, abs=1e-3)


async def test_cancellation_leaves_the_queue_and_propagates() -> None:
    """A cancelled waiter: CancelledError unchanged, EvictedCancelled counted."""
    ctl, _ = _controller()
    async with ctl:
        await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a"), size=9))
        await asyncio.sleep(1)
        assert ctl.statistics().queued_bytes == 9
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = ctl.statistics()
        assert stats.queued_requests == 0 and stats.queued_bytes == 0
        assert stats.outcomes[sg.Outcome.EVICTED_CANCELLED] == 1


async def test_cancel_in_the_iteration_before_dispatch_never_dispatches() -> None:
    """Cancel, then release in the same iteration: the dead request is not dispatched."""
    ctl, gate = _controller()
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        doomed = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("doomed")))
        survivor = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("survivor")))
        await asyncio.sleep(0)
        doomed.cancel()
        holder.release()  # runs a dispatch pass before `doomed` sees its cancellation
        ticket = await survivor
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert ticket.key.id == "survivor" and gate.in_flight == 1
        stats = ctl.statistics()
        assert stats.dispatched == 2 and stats.outcomes[sg.Outcome.EVICTED_CANCELLED] == 1


async def test_cancel_after_dispatch_before_resume_returns_the_slot() -> None:
    """Dispatched, then cancelled before the waiter ran: the slot is not leaked."""
    ctl, gate = _controller()
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a")))
        await asyncio.sleep(0)
        holder.release()  # dispatches `a`: its future now holds the ticket
        task.cancel()  # ...but the task never gets to run with it
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.in_flight == 0
        stats = ctl.statistics()
        assert stats.in_flight == 0 and stats.dispatched == 1
        assert stats.outcomes[sg.Outcome.EVICTED_CANCELLED] == 1


async def test_shutdown_evicts_queued_and_keeps_in_flight() -> None:
    """aclose(): queued get ControllerClosedEvictedError, in-flight may still release."""
    ctl, gate = _controller()
    async with ctl:
        running = await ctl.enqueue_and_wait(sg.FlowKey("a"))
        waiting = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("b", p))) for p in (0, 5)]
        await asyncio.sleep(0)
    for task in waiting:
        with pytest.raises(sg.ControllerClosedEvictedError):
            await task
    stats = ctl.statistics()
    assert stats.outcomes[sg.Outcome.EVICTED_OTHER] == 2 and stats.in_flight == 1
    running.release()
    assert gate.in_flight == 0 and ctl.statistics().in_flight == 0


async def test_submit_racing_close_is_never_left_waiting() -> None:
    """Regression (upstream 1.4 shutdown race): every request ends, none hangs."""
    ctl, _ = _controller()
    async with ctl:
        await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        tasks = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey(f"t{i}"))) for i in range(20)]
        closer = asyncio.create_task(ctl.aclose())
        tasks += [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey(f"u{i}"))) for i in range(20)]
        await closer
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, sg.FlowControlError) for r in results)
    stats = ctl.statistics()
    assert stats.queued_requests == 0
    assert stats.submitted == stats.dispatched + stats.rejected + stats.evicted


async def test_thousand_admits_over_fifty_new_priorities() -> None:
    """1,000 concurrent admits at 50 never-seen priorities: 50 new bands, no error."""
    ctl, _ = _controller(limit=8)
    rng = random.Random(7)
    keys = [sg.FlowKey(f"t{i % 13}", 1000 + rng.randrange(50)) for i in range(1000)]
    rng.shuffle(keys)

    async def one(key: sg.FlowKey) -> None:
        async with ctl.admit(key):
            await asyncio.sleep(0.01)

    async with ctl:
        await asyncio.gather(*(one(k) for k in keys))
        stats = ctl.statistics()
    assert sorted(stats.bands) == [0, *range(1000, 1050)]
    assert stats.dispatched == 1000 and stats.rejected == stats.evicted == 0


async def test_growing_the_limit_dispatches_waiters() -> None:
    """A detector notification (limit raised) wakes waiting requests."""
    ctl, gate = _controller(limit=0)
    async with ctl:
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a")))
        await asyncio.sleep(5)
        assert not task.done()
        gate.set_limit(1)
        ticket = await task
        assert ticket.queue_time == pytest.approx(5.0, abs=1e-3)


async def test_detector_without_notifications_is_rechecked_while_blocked() -> None:
    """A detector that cannot notify is re-asked at its recheck interval."""
    gate = ManualDetector(saturated=True, recheck_interval=0.05)
    ctl = sg.FlowController(saturation=gate)
    loop = asyncio.get_running_loop()
    async with ctl:
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a")))
        await asyncio.sleep(1.0)
        gate.set(saturated=False, notify=False)
        start = loop.time()
        await task
        assert loop.time() - start <= 0.05 + 1e-6


async def test_no_timer_is_armed_while_idle() -> None:
    """No periodic wake-up: an idle controller schedules nothing on the loop."""
    ctl, _ = _controller(sg.FlowControlConfig(flow_idle_timeout=5.0, band_idle_timeout=5.0))
    async with ctl:
        async with ctl.admit(sg.FlowKey("a", 3)):
            pass
        await asyncio.sleep(60)  # flow, then band, collected by one-shot timers
        stats = ctl.statistics()
        assert 3 not in stats.bands and not stats.flows
        assert "_on_timer" not in repr(getattr(asyncio.get_running_loop(), "_scheduled", []))


async def test_idle_flows_are_collected_in_virtual_time() -> None:
    """Flow GC runs from a one-shot timer at the idle deadline."""
    ctl, _ = _controller(sg.FlowControlConfig(flow_idle_timeout=10.0, band_idle_timeout=10.0))
    async with ctl:
        async with ctl.admit(sg.FlowKey("a", 4)):
            pass
        await asyncio.sleep(9.9)
        assert sg.FlowKey("a", 4) in ctl.statistics().flows
        await asyncio.sleep(0.2)
        assert sg.FlowKey("a", 4) not in ctl.statistics().flows


async def test_endpoints_lost_evicts_after_no_endpoint_ttl() -> None:
    """With no backend, waiters past their no-endpoint TTL get NoEndpointsEvictedError."""
    gate = ManualDetector(endpoints=False)
    ctl = sg.FlowController(sg.FlowControlConfig(no_endpoint_ttl=2.0), saturation=gate)
    loop = asyncio.get_running_loop()
    async with ctl:
        start = loop.time()
        with pytest.raises(sg.NoEndpointsEvictedError):
            await ctl.enqueue_and_wait(sg.FlowKey("a"))
        assert loop.time() == pytest.approx(start + 2.0, abs=1e-3)
        gate.set(endpoints=True, saturated=True)
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("b")))
        await asyncio.sleep(3.0)  # past its budget, but backends exist: keeps waiting
        gate.set(endpoints=False)
        with pytest.raises(sg.NoEndpointsEvictedError):
            await task


async def test_scale_from_zero_waits_for_endpoints() -> None:
    """Without a no-endpoint TTL, requests wait for the first backend."""
    gate = ManualDetector(endpoints=False)
    ctl = sg.FlowController(saturation=gate)
    async with ctl:
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a")))
        await asyncio.sleep(10)
        gate.set(endpoints=True)
        ticket = await task
        assert ticket.queue_time == pytest.approx(10.0, abs=1e-3)


async def test_enqueue_nowait() -> None:
    """*_nowait dispatches at once or raises WouldBlock, counting nothing."""
    ctl, _ = _controller()
    async with ctl:
        ticket = ctl.enqueue_nowait(sg.FlowKey("a"))
        with pytest.raises(sg.WouldBlock):
            ctl.enqueue_nowait(sg.FlowKey("b"))
        ticket.release()
        assert ctl.statistics().submitted == 1


async def test_reconcile_and_reconfigure_while_requests_wait() -> None:
    """Band-set and config changes drop nothing that waits."""
    ctl, _ = _controller()
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("h"))
        tasks = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a", p))) for p in (3, 4)]
        await asyncio.sleep(0)
        ctl.reconcile_priorities({0, 10})
        ctl.reconfigure(sg.FlowControlConfig(default_band=sg.BandConfig(fairness="round-robin")))
        assert sorted(ctl.statistics().bands) == [0, 3, 4, 10]
        holder.release()
        first = await tasks[1]
        assert first.priority == 4
        first.release()
        (await tasks[0]).release()
        assert sorted(ctl.statistics().bands) == [0, 10]


@pytest.mark.parametrize("bad", [-1, 1.5, True])
async def test_bad_size_is_refused_before_counting(bad: object) -> None:
    """Invalid input is a ValueError and counts nothing."""
    ctl, _ = _controller()
    async with ctl:
        with pytest.raises(ValueError, match="size"):
            await ctl.enqueue_and_wait(sg.FlowKey("a"), size=bad)  # type: ignore[arg-type]  # the point
        with pytest.raises(ValueError, match="ttl"):
            await ctl.enqueue_and_wait(sg.FlowKey("a"), ttl=0)
        with pytest.raises(ValueError, match="ttl"):
            await ctl.enqueue_and_wait(sg.FlowKey("a"), ttl=math.nan)
        assert ctl.statistics().submitted == 0


async def test_repr_shows_counts() -> None:
    """The controller's repr tells its state at a glance."""
    ctl, _ = _controller()
    assert "idle" in repr(ctl)
    async with ctl:
        await ctl.enqueue_and_wait(sg.FlowKey("a"))
        assert "running" in repr(ctl) and "in flight: 1" in repr(ctl)


async def test_max_utilization_keeps_headroom_for_higher_bands() -> None:
    """A band with max_utilization 0.5 fills half the slots; a higher band gets the rest
    at once, without waiting for a low-priority request to end."""
    config = sg.FlowControlConfig(
        default_band=sg.BandConfig(max_utilization=0.5),
        bands={10: sg.BandConfig(max_utilization=1.0)},
    )
    ctl, gate = _controller(config, limit=4)
    async with ctl:
        low = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("batch"))) for _ in range(4)]
        await asyncio.sleep(1)
        assert gate.in_flight == 2 and ctl.statistics().bands[0].queued_requests == 2
        high = await ctl.enqueue_and_wait(sg.FlowKey("chat", 10))
        assert high.queue_time == 0.0 and gate.in_flight == 3
        first = [t for t in low if t.done()]
        assert len(first) == 2
        for task in first:
            task.result().release()
        await asyncio.sleep(0)
        # 2 in flight (the chat one and nothing else below 0.5): one more low request fits
        assert gate.in_flight == 2
        high.release()
        for task in low:
            (await task).release()
        assert gate.in_flight == 0


async def test_enqueue_nowait_respects_the_band_ceiling() -> None:
    """Dispatched or raise, never queued: a band over its max_utilization raises."""
    gate = ManualDetector()
    gate.load = 0.7
    config = sg.FlowControlConfig(default_band=sg.BandConfig(max_utilization=0.5))
    async with sg.FlowController(config, saturation=gate) as ctl:
        with pytest.raises(sg.WouldBlock):
            ctl.enqueue_nowait(sg.FlowKey("a"))
        stats = ctl.statistics()
        assert stats.submitted == 0 and stats.queued_requests == 0 and not stats.flows
        waiter = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("b")))
        await asyncio.sleep(1)
        gate.load = 0.2
        gate.set()
        (await waiter).release()


async def test_a_pass_never_strands_its_batch_when_one_waiter_is_gone() -> None:
    """A queued ticket with no live waiter is revoked; the rest of the batch resumes."""
    ctl, gate = _controller(limit=1)
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        tasks = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey(f"w{i}"))) for i in range(3)]
        await asyncio.sleep(0)
        band = ctl._core.registry.bands[0]
        orphan = band.flows["w1"].queue.peek()
        assert orphan is not None
        orphan._waiter = None  # what the enqueue_nowait defect left behind
        gate.set_limit(3)
        holder.release()
        await asyncio.sleep(0)
        assert tasks[0].done() and tasks[2].done()
        assert gate.in_flight == 2 and ctl.statistics().in_flight == 2
        assert orphan.outcome is sg.Outcome.EVICTED_CANCELLED
        tasks[1].cancel()
        for task in (tasks[0], tasks[2]):
            (await task).release()


async def test_cancelling_a_queued_request_unblocks_the_work_behind_it() -> None:
    """A higher band parked at its ceiling blocks lower bands; cancelling it runs a pass."""
    gate = ManualDetector()
    gate.load = 0.7
    config = sg.FlowControlConfig(bands={10: sg.BandConfig(max_utilization=0.5)})
    async with sg.FlowController(config, saturation=gate) as ctl:
        high = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("chat", 10)))
        await asyncio.sleep(0)
        low = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("std", 0)))
        await asyncio.sleep(0)
        assert ctl.statistics().queued_requests == 2
        high.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert low.done()
        (await low).release()


async def test_cancelling_a_queued_request_arms_collection() -> None:
    """The cancelled request's flow goes idle and is collected on time."""
    config = sg.FlowControlConfig(default_ttl=None, flow_idle_timeout=5.0, band_idle_timeout=5.0)
    ctl, _ = _controller(config)
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("holder"))
        task = asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("gone", 3)))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(20)
        stats = ctl.statistics()
        assert sg.FlowKey("gone", 3) not in stats.flows and 3 not in stats.bands
        holder.release()


async def test_queued_requests_of_one_band_without_a_snapshot() -> None:
    """`queued_requests(priority)` answers from counters (Retry-After uses it per 429)."""
    ctl, gate = _controller()
    async with ctl:
        holder = await ctl.enqueue_and_wait(sg.FlowKey("h"))
        tasks = [asyncio.create_task(ctl.enqueue_and_wait(sg.FlowKey("a", p))) for p in (3, 3, 4)]
        await asyncio.sleep(0)
        assert (ctl.queued_requests(3), ctl.queued_requests(4), ctl.queued_requests(9)) == (2, 1, 0)
        assert ctl.queued_requests() == 3
        gate.set_limit(4)
        holder.release()
        for task in tasks:
            (await task).release()


async def test_a_failing_detector_is_logged_by_the_shell(caplog: pytest.LogCaptureFixture) -> None:
    """The core isolates a detector failure; the shell logs it, with its traceback."""

    class Boom(Exception):
        pass

    class FailingRelease:
        recheck_interval: float | None = None

        def is_saturated(self) -> bool:
            return False

        def has_endpoints(self) -> bool:
            return True

        def utilization(self) -> float:
            return 0.0

        def on_dispatch(self, ticket: sg.Ticket, /) -> None:
            pass

        def on_release(self, ticket: sg.Ticket, /) -> None:
            raise Boom("on_release")

        def set_listener(self, listener: object, /) -> None:
            pass

    ctl = sg.FlowController(saturation=FailingRelease())
    async with ctl:
        ticket = await ctl.enqueue_and_wait(sg.FlowKey("a"))
        with caplog.at_level(logging.ERROR, "sluicegate"):
            ticket.release()
        assert ticket.released and ctl.statistics().in_flight == 0
    [record] = [r for r in caplog.records if r.name == "sluicegate"]
    assert record.getMessage() == "saturation detector failed in on_release"
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
