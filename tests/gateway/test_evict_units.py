"""Units of opt-in eviction (`Preemption.make_room`'s last step, `end_evicted`): who may
be evicted, for whom, and that one eviction ends one stream once."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from sluicegate.gateway._preempt import Preemption
from sluicegate.gateway._resume import PausePolicy

pytestmark = pytest.mark.asyncio


def exchange(**kw: Any) -> Any:
    """A client exchange that has sent part of an SSE answer, recording what follows."""
    sent: list[bytes] = []

    async def chunk(data: bytes) -> None:
        sent.append(data)

    async def finish(data: bytes = b"") -> None:
        sent.append(data)
        sent.append(b"<end>")

    fields: dict[str, Any] = {
        "started": True,
        "sse": True,
        "finishing": False,
        "disconnected": False,
        "record": SimpleNamespace(pool=None, classification=None),
        "sent": sent,
        "chunk": chunk,
        "finish": finish,
    }
    return SimpleNamespace(**(fields | kw))


def ticket(priority: int, requeues: int = 1) -> Any:
    return SimpleNamespace(priority=priority, requeues=requeues)


class Streams:
    """Streams held in flight under `preemption.track`; each ends when released, or
    with its eviction."""

    def __init__(self, preemption: Preemption) -> None:
        self.preemption = preemption
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[str]] = []

    def add(self, priority: int, ex: Any = None, resumable: Any = None) -> Any:
        ex = exchange() if ex is None else ex

        async def hold() -> str:
            with self.preemption.track(ticket(priority), ex, stream=True, resumable=resumable):
                try:
                    await self.done.wait()
                except asyncio.CancelledError:
                    if await self.preemption.end_evicted(ex, resumable):
                        return "evicted"
                    raise
            return "served"

        self.tasks.append(asyncio.ensure_future(hold()))
        return ex

    async def outcomes(self) -> list[str]:
        self.done.set()
        return list(await asyncio.gather(*self.tasks))


async def test_off_by_default_nothing_is_evicted() -> None:
    preemption = Preemption(None, max_requeues=1)  # type: ignore[arg-type]
    streams = Streams(preemption)
    streams.add(-5)
    await asyncio.sleep(0)
    assert not preemption.make_room(10)
    assert await streams.outcomes() == ["served"]
    assert preemption.evictions == {} and preemption.no_victim == 1


async def test_the_lowest_priority_below_the_threshold_and_the_arrival_goes_first() -> None:
    preemption = Preemption(None, evict_below=0)  # type: ignore[arg-type]
    streams = Streams(preemption)
    for priority in (0, -1, -3, -3, 5):
        streams.add(priority)
    await asyncio.sleep(0)
    assert not preemption.make_room(-3)  # never for an equal (or lower) arrival
    assert preemption.make_room(-2)  # the later of the two p-3 streams
    assert preemption.make_room(10)  # the earlier one
    assert preemption.make_room(10)  # then p-1
    assert not preemption.make_room(10)  # p0 is at the threshold, p5 above it
    outcomes = await streams.outcomes()
    assert outcomes == ["served", "evicted", "evicted", "evicted", "served"]
    assert preemption.evictions == {-3: 2, -1: 1}


@pytest.mark.parametrize(
    "ex",
    [
        exchange(started=False),  # nothing sent: requeue's business, never eviction
        exchange(sse=False),  # a large non-streamed answer: no error event can follow
        exchange(finishing=True),  # its last bytes are going out: it ends anyway
        exchange(disconnected=True),
    ],
)
async def test_only_a_running_sse_stream_may_be_evicted(ex: Any) -> None:
    preemption = Preemption(None, evict_below=0)  # type: ignore[arg-type]
    streams = Streams(preemption)
    streams.add(-1, ex)
    await asyncio.sleep(0)
    assert not preemption.make_room(10)
    assert await streams.outcomes() == ["served"]


async def test_a_pausable_stream_is_paused_and_one_that_cannot_pause_is_evicted() -> None:
    preemption = Preemption(None, pause_policy=PausePolicy(), evict_below=0)  # type: ignore[arg-type]
    streams = Streams(preemption)

    def resumable(*, can_pause: bool) -> Any:
        splicer = SimpleNamespace(can_pause=can_pause, pauses=1, tokens=5)
        splicer.end_with_error = lambda message, *, error_type, code: orjson.dumps(
            {"error": {"message": message, "type": error_type, "code": code}}
        )
        return SimpleNamespace(requested=False, cuts=0, reading=False, splicer=splicer)

    pausable, stuck = resumable(can_pause=True), resumable(can_pause=False)
    streams.add(-1, resumable=pausable)
    ex = streams.add(-1, resumable=stuck)
    await asyncio.sleep(0)
    assert preemption.make_room(10)
    assert pausable.requested  # a pause loses nothing: it comes first
    assert preemption.make_room(10)
    await asyncio.sleep(0)
    # The splicer's whole-event error (with [DONE] in real life) ends the answer.
    assert orjson.loads(ex.sent[0])["error"]["code"] == "evicted"
    assert ex.sent[1:] == [b"<end>"]
    assert await streams.outcomes() == ["served", "evicted"]


async def test_an_eviction_ends_the_stream_once_with_an_error_event() -> None:
    preemption = Preemption(None, evict_below=0)  # type: ignore[arg-type]
    streams = Streams(preemption)
    ex = streams.add(-1)
    await asyncio.sleep(0)
    assert preemption.make_room(10)
    assert not preemption.make_room(10)  # already chosen: never twice
    assert await streams.outcomes() == ["evicted"]
    event, end, last = ex.sent
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    error = orjson.loads(event.removeprefix(b"data: "))["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "evicted")
    assert (end, last) == (b"", b"<end>")
    assert preemption.evictions == {-1: 1}
    assert preemption.describe()["evictions"] == {-1: 1}


async def test_a_second_cancellation_is_never_absorbed() -> None:
    preemption = Preemption(None, evict_below=0)  # type: ignore[arg-type]
    streams = Streams(preemption)
    ex = streams.add(-1)
    await asyncio.sleep(0)
    assert preemption.make_room(10)
    streams.tasks[0].cancel()  # someone else (the server, a shutdown) cancels it too
    with contextlib.suppress(asyncio.CancelledError):
        await streams.tasks[0]
    assert streams.tasks[0].cancelled()
    assert ex.sent == [] and preemption.evictions == {}


async def test_a_reload_turns_eviction_on_and_off() -> None:
    preemption = Preemption(None)  # type: ignore[arg-type]
    streams = Streams(preemption)
    streams.add(-1)  # requeued already, eviction off: not even tracked
    await asyncio.sleep(0)
    assert preemption.describe()["eviction"] == "off"
    preemption.evict_below = 0
    streams.add(-1)
    await asyncio.sleep(0)
    preemption.evict_below = None
    assert not preemption.make_room(10)
    preemption.evict_below = 0
    assert preemption.make_room(10)
    assert await streams.outcomes() == ["served", "evicted"]


async def test_a_victim_that_leaves_its_backend_a_slot_comes_first() -> None:
    """A request taken back from a backend over its capacity frees nothing for the
    arrival: the sent-last rule yields to one whose backend then has room."""
    over: list[Any] = []
    preemption = Preemption(None, frees_slot=lambda t: all(t is not o for o in over))  # type: ignore[arg-type]
    held = asyncio.Event()
    entries: list[tuple[Any, asyncio.Task[None]]] = []
    for _ in range(2):
        t = ticket(-1, requeues=0)

        async def hold(t: Any = t) -> None:
            with preemption.track(t, exchange(started=False), stream=True):
                await held.wait()

        entries.append((t, asyncio.ensure_future(hold())))
    await asyncio.sleep(0)
    (_, first_task), (last, last_task) = entries
    over.append(last)  # the one sent last sits on a backend over its capacity
    assert preemption.make_room(10)
    chosen = [e.task for e in preemption._live.values() if e.preempted]
    assert chosen == [first_task]
    held.set()
    await last_task
    with pytest.raises(asyncio.CancelledError):
        await first_task
