"""End to end on the simulator: preemptive requeue makes room for a higher-priority request."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import parse_config, serve_in_background
from sluicegate.sim import SimConfig, create_app, serve_many

from .conftest import eventually, slot_config

pytestmark = pytest.mark.asyncio


def body(tokens: int) -> bytes:
    doc: Any = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
    }
    return orjson.dumps(doc)


async def stream(
    session: aiohttp.ClientSession, url: str, objective: str, tokens: int, log: list[str]
) -> bytes:
    headers = {"x-gateway-inference-objective": objective}
    async with session.post(url + "/v1/chat/completions", data=body(tokens), headers=headers) as r:
        assert r.status == 200
        first = await r.content.readany()
        log.append(objective)  # its first chunk
        answer = first + await r.read()
        log.append(f"{objective} done")
        return answer


def config(url: str, **pool: Any) -> Any:
    return slot_config(url, slots=2, **pool)


async def test_a_waiting_interactive_request_takes_the_slot_of_a_batch_one_not_yet_started() -> (
    None
):
    # A long first-token time: the batch requests sit a while with no byte sent.
    sim = SimConfig(max_num_seqs=2, time_to_first_token=400, inter_token_latency=5)
    app = create_app(sim)
    async with (
        serve_many([app], "127.0.0.1", [0]) as urls,
        serve_in_background(config(urls[0])) as gw,
    ):
        assert gw.url is not None
        pool = gw.pools["p"]
        log: list[str] = []
        async with aiohttp.ClientSession() as session:
            batch = [
                asyncio.ensure_future(stream(session, gw.url, "batch", 200, log)) for _ in range(2)
            ]
            await eventually(lambda: app.engine.statistics().running == 2)
            await stream(session, gw.url, "interactive", 5, log)
            # It did not wait for a batch request to end, and the one batch request
            # left running is the only one that started.
            assert log == ["batch", "interactive", "interactive done"]
            answers = await asyncio.gather(*batch)
            # The requeued batch request was answered in full, invisibly.
            assert all(a.rstrip().endswith(b"[DONE]") for a in answers)
            assert pool.preemption.requeued == 1
            async with session.get(gw.url + "/metrics") as resp:
                text = (await resp.read()).decode()
            assert 'requests_requeued_total{pool="p"} 1.0' in text
        stats = pool.controller.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0
        assert stats.dispatched == 3  # each request counted once, the requeue undone
        # The engine stopped work on the victim (its connection was closed).
        assert app.engine.statistics().aborted == 1


async def test_off_by_config_and_a_started_stream_is_never_taken_back() -> None:
    sim = SimConfig(max_num_seqs=2, time_to_first_token=10, inter_token_latency=30)
    app = create_app(sim)
    async with serve_many([app], "127.0.0.1", [0]) as urls:
        # Pausing (the other way to make room) is off here: see test_pause_e2e.py.
        async with serve_in_background(config(urls[0], preemption="off")) as gw:
            assert gw.url is not None
            pool = gw.pools["p"]
            log: list[str] = []
            async with aiohttp.ClientSession() as session:
                batch = [
                    asyncio.ensure_future(stream(session, gw.url, "batch", 20, log))
                    for _ in range(2)
                ]
                # Both batch streams have sent their first bytes to their clients.
                await eventually(lambda: log == ["batch", "batch"])
                await stream(session, gw.url, "interactive", 2, log)
                await asyncio.gather(*batch)
            assert pool.preemption.requeued == 0
            assert pool.preemption.no_victim == 1
        off = config(urls[0], preemptive_requeue=False)
        async with serve_in_background(off) as gw:
            assert not gw.pools["p"].preemption.enabled


async def test_forward_priority_lets_a_priority_scheduling_engine_order_its_queue() -> None:
    sim = SimConfig(
        max_num_seqs=1, time_to_first_token=20, inter_token_latency=5, scheduling_policy="priority"
    )
    app = create_app(sim)
    async with serve_many([app], "127.0.0.1", [0]) as urls:
        doc = {
            "server": {"host": "127.0.0.1", "port": 0},
            "pools": [
                {
                    "name": "p",
                    "backends": urls,
                    # Everything goes to the engine at once: its own queue decides.
                    "saturation": {"type": "concurrency", "max_in_flight": 10},
                    "forward_priority": True,
                }
            ],
            "objectives": [
                {"name": "interactive", "priority": 10},
                {"name": "batch", "priority": -1},
            ],
        }
        async with serve_in_background(parse_config(doc)) as gw, aiohttp.ClientSession() as s:
            assert gw.url is not None
            log: list[str] = []
            blocker = asyncio.ensure_future(stream(s, gw.url, "batch", 30, log))
            await eventually(lambda: app.engine.statistics().running == 1)
            late_batch = asyncio.ensure_future(stream(s, gw.url, "batch", 2, log))
            await eventually(lambda: app.engine.statistics().waiting == 1)
            urgent = asyncio.ensure_future(stream(s, gw.url, "interactive", 2, log))
            await asyncio.gather(blocker, late_batch, urgent)
            done = [e for e in log if e.endswith("done")]
            assert done == ["batch done", "interactive done", "batch done"]
