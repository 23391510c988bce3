"""Retry-After as a promise, end to end: a full band's 429 keeps a place for the refused
request (recognised by its body) against the tenant's fresh requests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import Gateway, parse_config, serve_in_background
from sluicegate.sim import SimConfig, create_app, serve_many

from .conftest import eventually

if TYPE_CHECKING:
    from multidict import CIMultiDict

pytestmark = pytest.mark.asyncio

TENANT = {"x-gateway-inference-fairness-id": "tenant"}


def body(text: str, tokens: int = 1) -> bytes:
    doc: Any = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": tokens,
    }
    return orjson.dumps(doc)


async def post(
    session: aiohttp.ClientSession, gw: Gateway, data: bytes
) -> tuple[int, CIMultiDict[str]]:
    async with session.post(f"{gw.url}/v1/chat/completions", data=data, headers=TENANT) as r:
        await r.read()
        return r.status, r.headers.copy()


async def test_the_refused_request_gets_the_place_its_tenant_s_next_one_does_not() -> None:
    sim = SimConfig(max_num_seqs=1, time_to_first_token=40, inter_token_latency=5)
    doc = {
        "server": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {
                "name": "p",
                "backends": ["-"],
                "saturation": {"type": "concurrency", "max_in_flight": 1},
                "preemptive_requeue": False,
                "preemption": "off",
            }
        ],
        "flow_control": {"demand_headroom": False, "bands": {0: {"max_requests": 1}}},
    }
    async with serve_many([create_app(sim)], "127.0.0.1", [0]) as urls:
        doc["pools"][0]["backends"] = urls  # type: ignore[index]
        async with serve_in_background(parse_config(doc)) as gw, aiohttp.ClientSession() as s:
            ctl = gw.pools["p"].controller
            # An outflow to go by: 10 requests dispatched from the band's queue.
            for i in range(10):
                pair = [post(s, gw, body(f"warm {i} a")), post(s, gw, body(f"warm {i} b"))]
                assert [status for status, _ in await asyncio.gather(*pair)] == [200, 200]
            running = asyncio.ensure_future(post(s, gw, body("long", 150)))
            await eventually(lambda: ctl.dispatched == 21)
            queued = asyncio.ensure_future(post(s, gw, body("queued", 150)))
            await eventually(lambda: ctl.queued_requests() == 1)
            status, headers = await post(s, gw, body("refused"))
            assert status == 429 and headers["x-sluicegate-retry-reserved"] == "1"
            assert headers["x-sluicegate-retry"] == "reserved"
            delay = int(headers["retry-after"])
            await running  # the queued one starts: the band's place is free again...
            await eventually(lambda: ctl.queued_requests() == 0)
            status, headers = await post(s, gw, body("fresh"))
            assert status == 429  # ...but promised: the tenant's fresh request is refused
            assert headers["x-sluicegate-retry"] == "reserved"  # and promised a later one
            await asyncio.sleep(delay)
            status, _ = await post(s, gw, body("refused"))
            assert status == 200
            assert (await queued)[0] == 200
            figures = ctl.retry_reservations()
            assert figures["made"] == 2 and figures["honoured"] == 1
            async with s.get(f"{gw.url}/metrics") as r:
                text = (await r.read()).decode()
            assert 'retry_reservations_total{event="honoured",pool="p"} 1.0' in text
