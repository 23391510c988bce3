"""Operations pages with many tenants: /metrics and /debug/flowcontrol stay O(bands + N).

Cost is checked structurally (how many per-flow snapshots a page builds), never by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

import sluicegate as sg
from sluicegate._core import _statistics
from sluicegate.gateway import serve_in_background

from .conftest import free_port, make_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

PREFIX = "inference_extension_flow_control_"
TENANTS = 300


@contextlib.asynccontextmanager
async def crowded(
    tenants: int = TENANTS, **sections: Any
) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession]]:
    """A gateway whose pool is held saturated with `tenants` flows queued: tenant i has
    i % 3 + 1 requests waiting."""
    never = f"http://127.0.0.1:{free_port()}"  # never contacted
    config = make_config(
        [never],
        saturation={"type": "concurrency", "max_in_flight": 1},
        flow_control={"default_ttl": None, "default_band": {"max_requests": None}},
        **sections,
    )
    async with (
        serve_in_background(config) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        ctl = gw.pools["default"].controller
        holder = await ctl.enqueue_and_wait(sg.FlowKey("holder", 0))
        waiters = [
            asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey(f"t{i}", 0), ttl=math.inf))
            for i in range(tenants)
            for _ in range(i % 3 + 1)
        ]
        await asyncio.sleep(0)
        try:
            yield gw, client
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            holder.release()


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the per-flow snapshots built (one list item each)."""
    built: list[int] = []
    original = _statistics._flow_statistics

    def counting(flow: Any) -> Any:
        built.append(1)
        return original(flow)

    monkeypatch.setattr(_statistics, "_flow_statistics", counting)
    return built


@pytest.mark.asyncio
async def test_debug_lists_the_n_largest_flows_and_counts_the_rest(snapshots: list[int]) -> None:
    async with crowded() as (_, client):
        snapshots.clear()
        async with client.get("/debug/flowcontrol?flows=5") as r:
            assert r.status == 200
            pool = (await r.json())["pools"]["default"]
        assert len(snapshots) <= 5
        flows = pool["flows"]
        assert len(flows) == 5
        assert [f["queued_requests"] for f in flows] == [3] * 5  # largest first
        assert pool["flows_omitted"] == TENANTS + 1 - 5  # the holder's flow too
        assert pool["queued_requests"] == sum(i % 3 + 1 for i in range(TENANTS))
        async with client.get("/debug/flowcontrol") as r:
            assert len((await r.json())["pools"]["default"]["flows"]) == 20  # the default
        async with client.get("/debug/flowcontrol?flows=x") as r:
            assert r.status == 400


@pytest.mark.asyncio
async def test_metrics_queue_gauges_snapshot_only_labelled_flows(snapshots: list[int]) -> None:
    """Per-fairness-id queue gauges cover the labelled ids; the rest add up in 'other'."""
    async with crowded(metrics={"max_fairness_ids": 10}) as (gw, client):
        for i in range(10):  # these ids got labels, e.g. from earlier requests
            gw.metrics.fairness_label(f"t{i}")
        snapshots.clear()
        async with client.get("/metrics") as r:
            text = await r.text()
    assert len(snapshots) <= 10
    sizes = {
        line.split('fairness_id="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{PREFIX}queue_size{{")
    }
    assert sizes["t0"] == 1.0
    assert sizes["t2"] == 3.0
    assert sum(sizes.values()) == sum(i % 3 + 1 for i in range(TENANTS))
    assert sizes["other"] == sum(i % 3 + 1 for i in range(10, TENANTS))


@pytest.mark.asyncio
async def test_controller_summary_and_flow_lookup() -> None:
    async with crowded(tenants=6) as (gw, _):
        ctl = gw.pools["default"].controller
        summary = ctl.summary(2)
        assert [f.queued_requests for f in summary.flows.values()] == [3, 3]
        assert summary.bands[0].flows == 7
        assert summary.queued_requests == ctl.statistics().queued_requests
        assert ctl.summary(0).flows == {}
        one = ctl.flow_statistics(0, "t4")
        assert one is not None and one.queued_requests == 2
        assert ctl.flow_statistics(0, "nobody") is None
        assert ctl.flow_statistics(7, "t4") is None
        with pytest.raises(ValueError, match="flows"):
            ctl.summary(-1)
