"""End to end on loopback: the official `openai` client -> gateway -> the simulator."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import pytest

from sluicegate.gateway import (
    UtilizationDetector,
    parse_config,
    parse_metrics,
    serve_in_background,
)
from sluicegate.sim import SimConfig
from sluicegate.sim import serve_in_background as serve_sim

from .conftest import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

pytestmark = pytest.mark.asyncio

MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@contextlib.asynccontextmanager
async def through_gateway(
    sim: SimConfig, **pool: Any
) -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI, str]]:
    """A simulator, a gateway scraping it, and an openai client pointed at the gateway."""
    async with serve_sim(sim) as sim_url:
        doc = {
            "server": {"host": "127.0.0.1", "port": 0},
            "pools": [{"name": "sim", "models": ["sim-model"], "backends": [sim_url], **pool}],
            "objectives": [
                {"name": "interactive", "priority": 10},
                {"name": "batch", "priority": -1},
            ],
        }
        async with serve_in_background(parse_config(doc)) as gw:
            client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)
            try:
                detector = gw.pools["sim"].detector
                if isinstance(detector, UtilizationDetector):
                    backends = detector.backends.values()
                    await eventually(lambda: all(b.scraped_at is not None for b in backends))
                yield gw, client, sim_url
            finally:
                await client.close()


async def sim_running(sim_url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(sim_url + "/metrics") as r:
        return parse_metrics(await r.read()).running


async def test_openai_client_chat_stream_and_models() -> None:
    """Completions, streams and the model list work unchanged through the gateway."""
    sim = SimConfig(time_to_first_token=5, inter_token_latency=1)
    async with through_gateway(sim) as (gw, client, _):
        reply = await client.chat.completions.create(
            model="sim-model", messages=MESSAGES, max_tokens=5
        )
        assert reply.choices[0].message.content
        raw = await client.chat.completions.with_raw_response.create(
            model="sim-model", messages=MESSAGES, max_tokens=3
        )
        assert raw.headers["x-sluicegate-outcome"] == "Dispatched"
        stream = await client.chat.completions.create(
            model="sim-model", messages=MESSAGES, max_tokens=8, stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert len([p for p in pieces if p]) >= 2
        models = [m.id async for m in client.models.list()]
        assert models == ["sim-model"]
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="nope", messages=MESSAGES)
        assert "sim-model" in str(info.value)
        assert gw.pools["sim"].controller.statistics().in_flight == 0


async def test_priority_order_under_saturation_with_utilization() -> None:
    """Against a one-slot simulator, queued interactive work overtakes earlier batch work."""
    sim = SimConfig(max_num_seqs=1, time_to_first_token=20, inter_token_latency=10)
    sat = {"type": "utilization", "queue_depth_threshold": 1, "scrape_interval": 0.02}
    async with through_gateway(sim, saturation=sat) as (gw, client, _):
        backend = gw.pools["sim"].detector.backends
        done: list[str] = []

        async def call(name: str, objective: str | None, tokens: int) -> None:
            headers = {"x-gateway-inference-objective": objective} if objective else {}
            await client.chat.completions.create(
                model="sim-model", messages=MESSAGES, max_tokens=tokens, extra_headers=headers
            )
            done.append(name)

        tasks = [asyncio.ensure_future(call(f"blocker{i}", None, 40)) for i in range(2)]
        # The second blocker waits inside the simulator: the pool is now saturated.
        await eventually(
            lambda: any(b.metrics and b.metrics.waiting >= 1 for b in backend.values())
        )
        ctl = gw.pools["sim"].controller
        queue = [("b1", "batch"), ("b2", "batch"), ("i1", "interactive"), ("i2", "interactive")]
        for name, objective in queue:
            tasks.append(asyncio.ensure_future(call(name, objective, 2)))
            await eventually(lambda: ctl.statistics().queued_requests == len(tasks) - 2)
        assert done == []  # all four queued while the blockers still hold the simulator
        await asyncio.gather(*tasks)
        # Strict priority is the gateway's promise; between two requests it dispatches
        # together (the detector's view lags the simulator by a scrape), the order in which
        # their connections reach the simulator is the OS's: compare as sets.
        assert sorted(done[2:4]) == ["i1", "i2"]
        assert sorted(done[4:]) == ["b1", "b2"]


async def test_disconnect_while_streaming_frees_the_simulator_slot() -> None:
    """Closing a stream mid-way makes the simulator's running count drop."""
    sim = SimConfig(time_to_first_token=5, inter_token_latency=50)
    async with through_gateway(sim) as (gw, client, sim_url):
        stream = await client.chat.completions.create(
            model="sim-model", messages=MESSAGES, max_tokens=200, stream=True
        )
        async for _ in stream:
            break
        assert await sim_running(sim_url) == 1
        await stream.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await sim_running(sim_url) != 0:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        await eventually(lambda: gw.pools["sim"].controller.statistics().in_flight == 0)
