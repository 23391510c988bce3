"""Units of the pause wiring: a resumed request goes back to its backend when it can."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sluicegate.gateway import ConcurrencySettings
from sluicegate.gateway._saturation import ConcurrencyDetector


class _Ticket:
    assignment: Any = None


def test_move_to_sends_a_resumed_request_home_only_when_home_has_room() -> None:
    settings = ConcurrencySettings(type="concurrency", max_in_flight=1)
    detector = ConcurrencyDetector(["http://a", "http://b"], settings, lambda: 0.0)
    told: list[bool] = []
    detector.set_listener(lambda: told.append(True))
    a, b = detector.backends.values()
    other: Any = _Ticket()
    assert not detector.is_saturated()
    detector.on_dispatch(other)  # a is full now
    resumed: Any = _Ticket()
    assert not detector.is_saturated()
    detector.on_dispatch(resumed)
    assert resumed.assignment.backend is b
    assert not detector.move_to(resumed, "http://a")  # home is full: it stays
    assert not detector.move_to(resumed, "http://b")  # already home
    assert not detector.move_to(resumed, "http://gone")
    detector.on_release(other)
    assert detector.move_to(resumed, "http://a")
    assert (a.in_flight, b.in_flight) == (1, 0)
    assert told  # the slot it left on b is news for the controller
    detector.on_release(resumed)
    assert (a.in_flight, b.in_flight) == (0, 0)


@pytest.mark.asyncio
async def test_only_the_top_priority_pauses_a_running_stream() -> None:
    from types import SimpleNamespace

    from sluicegate.gateway._preempt import Preemption
    from sluicegate.gateway._resume import PausePolicy

    preemption = Preemption(None, enabled=False, pause_policy=PausePolicy())  # type: ignore[arg-type]
    victim: Any = SimpleNamespace(
        requested=False, cuts=0, reading=False, splicer=SimpleNamespace(can_pause=True)
    )
    ex: Any = SimpleNamespace(started=True, disconnected=False)
    batch: Any = SimpleNamespace(priority=-1, requeues=0)
    interactive: Any = SimpleNamespace(priority=10, requeues=0)
    done = asyncio.Event()

    async def hold(ticket: Any, resumable: Any = None) -> None:
        with preemption.track(ticket, ex, stream=True, resumable=resumable):
            await done.wait()

    tasks = [asyncio.ensure_future(hold(batch, victim)), asyncio.ensure_future(hold(interactive))]
    await asyncio.sleep(0)
    # A standard (p0) arrival may not pause batch work while the pool serves a higher
    # band: the continuation's prefill would be spent for a request that can wait.
    assert not preemption.make_room(0)
    assert not victim.requested
    assert preemption.make_room(10)
    assert victim.requested
    done.set()
    await asyncio.gather(*tasks)
