"""End to end on the simulator: opt-in eviction ends a running low-priority stream with an
SSE `error` event (the official openai SDK raises `APIError`) so higher-priority work
gets its slot; off by default, and never for priorities at or above the threshold or
the arrival's."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson
import pytest

from sluicegate.gateway import Gateway, serve_in_background
from sluicegate.sim import SimConfig, create_app, serve_many

from .conftest import eventually, slot_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.sim._app import SimApp

pytestmark = pytest.mark.asyncio

QUESTION = "Tell me all about sluice gates, dams and the rivers they tame. " * 3  # 48 tokens
# Echo mode: the answer is the question again, one 4-character token every 20 ms.
SIM = SimConfig(
    max_num_seqs=1,
    mode="echo",
    time_to_first_token=5.0,
    inter_token_latency=20.0,
    prefill_time_per_token=0.0,
)
OBJECTIVES = [
    {"name": "interactive", "priority": 10},
    {"name": "standard", "priority": 0},
    {"name": "batch", "priority": -1},
]


def config(url: str, **pool: Any) -> Any:
    return slot_config(url, objectives=OBJECTIVES, **pool)


@contextlib.asynccontextmanager
async def running(**pool: Any) -> AsyncIterator[tuple[Gateway, SimApp]]:
    app = create_app(SIM)
    async with (
        serve_many([app], "127.0.0.1", [0]) as urls,
        serve_in_background(config(urls[0], **pool)) as gw,
    ):
        yield gw, app


def sdk(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)


async def short(gw: Gateway, objective: str) -> str:
    async with sdk(gw) as client:
        reply = await client.completions.create(
            model="sim-model",
            prompt="q" * 12,
            max_tokens=3,
            extra_headers={"x-gateway-inference-objective": objective},
        )
    return reply.choices[0].text


async def scenario(
    gw: Gateway, victim: str, arrival: str, **body: Any
) -> tuple[list[Any], BaseException | None, list[str]]:
    """A `victim` stream runs; a few tokens in, an `arrival` request comes. Returns the
    victim's chunks, what its iteration raised, and the order the two ended in."""
    chunks: list[Any] = []
    order: list[str] = []
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            extra_headers={"x-gateway-inference-objective": victim},
            **body,
        )

        async def read() -> None:
            try:
                async for chunk in stream:
                    chunks.append(chunk)  # noqa: PERF401 (the test watches it grow)
            finally:
                order.append("victim")

        reader = asyncio.ensure_future(read())
        await eventually(lambda: len(chunks) >= 4)
        await short(gw, arrival)
        order.append("arrival")
        results = await asyncio.gather(reader, return_exceptions=True)
    raised = results[0] if isinstance(results[0], BaseException) else None
    return chunks, raised, order


async def metrics(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as resp:
        return await resp.text()


async def debug(gw: Gateway) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/debug/flowcontrol") as r:
        return orjson.loads(await r.read())["pools"]["p"]["preemption"]


def text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_a_low_stream_is_evicted_for_a_high_arrival_with_an_error_event() -> None:
    async with running(preemption="off", evict_streams=True) as (gw, app):
        pool = gw.pools["p"]
        chunks, raised, order = await scenario(gw, "batch", "interactive")
        assert isinstance(raised, openai.APIError), raised
        assert "higher-priority" in raised.message
        assert isinstance(raised.body, dict) and raised.body["code"] == "evicted"
        assert order == ["victim", "arrival"]  # the arrival got the slot
        assert 0 < len(text(chunks)) < len(QUESTION)  # it keeps what it was sent
        assert pool.preemption.evictions == {-1: 1}
        assert 'requests_evicted_total{pool="p",priority="-1"} 1.0' in await metrics(gw)
        described = await debug(gw)
        assert described["eviction"] == "below 0"
        assert described["evictions"] == {"-1": 1}
        assert app.engine.statistics().aborted == 1  # the engine stopped generating it
        await eventually(lambda: pool.controller.statistics().in_flight == 0)
        stats = pool.controller.statistics()
        assert stats.queued_requests == 0 and app.engine.statistics().running == 0


async def test_eviction_is_off_by_default() -> None:
    async with running(preemption="off") as (gw, app):
        pool = gw.pools["p"]
        chunks, raised, order = await scenario(gw, "batch", "interactive")
        assert raised is None
        assert text(chunks) == QUESTION
        assert order == ["victim", "arrival"]  # the arrival waited for the whole answer
        assert pool.preemption.evictions == {}
        assert "requests_evicted_total{" not in await metrics(gw)
        assert (await debug(gw))["eviction"] == "off"
        assert app.engine.statistics().aborted == 0


async def test_a_pausable_stream_is_paused_not_evicted() -> None:
    async with running(evict_streams=True) as (gw, _):
        chunks, raised, _ = await scenario(gw, "batch", "interactive")
        assert raised is None and text(chunks) == QUESTION
        preemption = gw.pools["p"].preemption
        assert preemption.pauses[-1] == 1 and preemption.evictions == {}


async def test_a_stream_that_cannot_pause_is_evicted_when_pausing_is_on() -> None:
    async with running(evict_streams=True) as (gw, _):
        # A stop string may straddle a pause: this request is never paused.
        _, raised, _ = await scenario(gw, "batch", "interactive", stop=["zzz"])
        assert isinstance(raised, openai.APIError), raised
        preemption = gw.pools["p"].preemption
        assert preemption.pauses == {} and preemption.evictions == {-1: 1}


@pytest.mark.parametrize(
    ("victim", "arrival", "below"),
    [
        ("standard", "interactive", 0),  # at the threshold: never evicted
        ("batch", "batch", 0),  # the same priority as the arrival
        ("standard", "batch", 100),  # a higher priority than the arrival
    ],
)
async def test_never_evicts_at_the_threshold_or_for_a_lower_or_equal_arrival(
    victim: str, arrival: str, below: int
) -> None:
    async with running(preemption="off", evict_streams=True, evict_below_priority=below) as (
        gw,
        app,
    ):
        chunks, raised, _ = await scenario(gw, victim, arrival)
        assert raised is None and text(chunks) == QUESTION
        assert gw.pools["p"].preemption.evictions == {}
        assert app.engine.statistics().aborted == 0


async def test_the_threshold_is_configurable() -> None:
    async with running(preemption="off", evict_streams=True, evict_below_priority=5) as (gw, _):
        _, raised, _ = await scenario(gw, "standard", "interactive")
        assert isinstance(raised, openai.APIError), raised
        assert gw.pools["p"].preemption.evictions == {0: 1}
