"""End to end: the default (adaptive) pool learns a simulator's batch size from its answers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import AdaptiveDetector, parse_config, serve_in_background
from sluicegate.sim import SimConfig, create_app, serve_many

pytestmark = pytest.mark.asyncio

BODY: Any = {
    "model": "sim-model",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 12,
    "stream": True,
}


async def stream_one(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url + "/v1/chat/completions", data=orjson.dumps(BODY)) as resp:
        assert resp.status == 200
        return len(await resp.read())


async def test_the_default_pool_learns_the_batch_size_and_keeps_the_engine_queue_short() -> None:
    sim = SimConfig(max_num_seqs=4, time_to_first_token=30, inter_token_latency=5)
    app = create_app(sim)
    async with serve_many([app], "127.0.0.1", [0]) as urls:
        doc = {
            "server": {"host": "127.0.0.1", "port": 0},
            "pools": [{"name": "p", "backends": urls}],
        }
        async with serve_in_background(parse_config(doc)) as gw:
            detector = gw.pools["p"].detector
            assert isinstance(detector, AdaptiveDetector)
            most_waiting = 0

            def watch() -> None:
                nonlocal most_waiting
                most_waiting = max(most_waiting, app.engine.statistics().waiting)

            assert gw.url is not None
            async with aiohttp.ClientSession() as session:
                for wave in range(6):  # waves of twice the initial limit
                    if wave == 1:
                        most_waiting = 0  # the first wave teaches it (it starts at 8)
                    sends = [stream_one(session, gw.url) for _ in range(16)]
                    tasks = [asyncio.ensure_future(s) for s in sends]
                    while not all(t.done() for t in tasks):
                        watch()
                        await asyncio.sleep(0.005)
                    await asyncio.gather(*tasks)
                limit = detector.limit_of(next(iter(detector.backends.values())))
                assert limit is not None
                # The learned limit sits at the batch size: it started at 8 and backed off.
                assert 1 <= limit < 7
                async with session.get(gw.url + "/metrics") as resp:
                    text = (await resp.read()).decode()
                assert "backend_concurrency_limit{" in text
                async with session.get(gw.url + "/debug/flowcontrol") as resp:
                    debug = orjson.loads(await resp.read())
            # Once learned, at most a probe or two waited inside the engine.
            assert most_waiting <= 4
            backend = debug["pools"]["p"]["backends"][0]
            assert backend["concurrency_limit"] == pytest.approx(limit, abs=1e-3)
            assert backend["ttft_samples"] >= 90
