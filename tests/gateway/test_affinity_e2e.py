"""End to end on two simulators: a paused request resumes on its own engine (slot loans,
`_affinity.py`), where its prefix is cached, even when the other engine frees a slot
first; the freed slot there goes to the queue as usual."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson
import pytest

from sluicegate.gateway import Gateway, parse_config, serve_in_background
from sluicegate.sim import create_app, serve_many

from .conftest import TWO_BANDS, eventually
from .test_pause_e2e import BATCH, INTERACTIVE, QUESTION, SIM

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.sim import SimApp

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def two_engines() -> AsyncIterator[tuple[Gateway, dict[str, SimApp]]]:
    apps = [create_app(SIM), create_app(SIM)]
    async with serve_many(apps, "127.0.0.1", [0, 0]) as urls:
        config = parse_config(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "pools": [
                    {
                        "name": "p",
                        "backends": list(urls),
                        "saturation": {"type": "concurrency", "max_in_flight": 1},
                    }
                ],
                "flow_control": {"demand_headroom": False},
                "objectives": TWO_BANDS,
            }
        )
        async with serve_in_background(config) as gw:
            yield gw, dict(zip(urls, apps, strict=True))


def backend_of(gw: Gateway, flow_priority: int) -> str:
    """The backend of the one tracked request of `flow_priority`."""
    [url] = [
        e.ex.record.backend
        for e in gw.pools["p"].preemption._live.values()
        if e.ticket.priority == flow_priority and e.ex.record.backend
    ]
    assert url is not None
    return url


async def test_a_paused_request_resumes_on_its_own_engine() -> None:
    async with two_engines() as (gw, apps):
        pool = gw.pools["p"]
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)
        async with client, aiohttp.ClientSession() as session:
            stream = await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                extra_headers=BATCH,
            )
            chunks: list[Any] = []

            async def read() -> None:
                async for chunk in stream:
                    chunks.append(chunk)  # noqa: PERF401 (the test watches it grow)

            reader = asyncio.ensure_future(read())
            await eventually(lambda: len(chunks) >= 4)
            home = backend_of(gw, -1)
            # The other engine's slot: a batch stream that may not pause (a stop string).
            other = await session.post(
                f"{gw.url}/v1/chat/completions",
                data=orjson.dumps(
                    {
                        "model": "sim-model",
                        "messages": [{"role": "user", "content": QUESTION * 4}],
                        "stream": True,
                        "stop": ["~~~"],
                    }
                ),
                headers=BATCH,
            )
            await other.content.readany()
            # A long interactive request pauses the first stream and takes its slot.
            long = asyncio.ensure_future(
                client.completions.create(
                    model="sim-model", prompt="q" * 200, max_tokens=50, extra_headers=INTERACTIVE
                )
            )
            await eventually(lambda: pool.preemption.pauses[-1] == 1)
            other.close()  # the other engine frees its slot first: not the paused one's
            [away] = [url for url in apps if url != home]
            await eventually(lambda: apps[away].engine.statistics().running == 0)
            assert not long.done()  # the home engine is still busy with it
            assert pool.preemption.describe()["paused_requests"] != []  # still waits
            await long
            await reader
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == QUESTION
        # It resumed at home: its prefill hit the cache there; nothing continued away.
        assert apps[away].engine.counters.continued_prefill_tokens == 0
        assert 0 < apps[home].engine.counters.continued_prefill_tokens <= SIM.block_size + 1
        assert pool.preemption.describe()["loans"] == {"lent": 0, "returned": 1, "fell_back": 0}
        stats = pool.controller.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0
