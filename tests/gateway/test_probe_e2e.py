"""End to end: learning the batch size never puts a top-band request in an engine's queue."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import parse_config, serve_in_background
from sluicegate.sim import SimConfig, create_app, serve_many

if TYPE_CHECKING:
    from sluicegate.sim import SimRequest

pytestmark = pytest.mark.asyncio


def body(max_tokens: int) -> bytes:
    doc: Any = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    return orjson.dumps(doc)


async def stream(session: aiohttp.ClientSession, url: str, objective: str, tokens: int) -> None:
    headers = {"x-gateway-inference-objective": objective}
    async with session.post(
        url + "/v1/chat/completions", data=body(tokens), headers=headers
    ) as resp:
        assert resp.status == 200
        await resp.read()


async def test_probes_beyond_the_batch_are_taken_by_lower_priorities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = SimConfig(max_num_seqs=4, time_to_first_token=30, inter_token_latency=20)
    app = create_app(sim)
    submitted: list[SimRequest] = []
    submit = app.engine.submit

    def record(*args: Any, **kwargs: Any) -> SimRequest:
        req = submit(*args, **kwargs)
        submitted.append(req)
        return req

    monkeypatch.setattr(app.engine, "submit", record)
    async with serve_many([app], "127.0.0.1", [0]) as urls:
        doc = {
            "server": {"host": "127.0.0.1", "port": 0},
            "pools": [{"name": "p", "backends": urls, "preemption": "off"}],
            "objectives": [{"name": "high", "priority": 10}, {"name": "low", "priority": -1}],
        }
        async with serve_in_background(parse_config(doc)) as gw:
            assert gw.url is not None
            url = gw.url
            async with aiohttp.ClientSession() as session:

                async def low_worker() -> None:
                    for _ in range(6):
                        await stream(session, url, "low", 12)

                async def high_sender() -> None:
                    for _ in range(15):
                        await stream(session, url, "high", 2)
                        await asyncio.sleep(0.05)

                await asyncio.gather(*(low_worker() for _ in range(8)), high_sender())
    high = [r for r in submitted if r.output_tokens == 2]
    low = [r for r in submitted if r.output_tokens == 12]
    assert len(high) == 15 and len(low) == 48
    # No request of the top band waited in the engine's queue ...
    assert all(r.admitted_at == r.arrival_at for r in high)
    # ... though the limit did go past the batch of 4: the probes queued low requests.
    assert any(r.admitted_at is not None and r.admitted_at > r.arrival_at for r in low)
