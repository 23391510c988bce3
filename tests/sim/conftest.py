"""Fixtures for the simulator's HTTP tests: an in-process server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
import openai
import pytest_asyncio

from sluicegate.sim import SimApp, SimConfig, create_app, serve_in_background

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sluicegate.sim import EngineStatistics

#: Fast enough for tests, slow enough that a stream spans several loop iterations.
FAST = SimConfig(
    served_model_names=("sim-model", "alias"),
    max_num_seqs=4,
    time_to_first_token=5.0,
    inter_token_latency=1.0,
    prefill_time_per_token=0.0,
)


class Sim:
    """A running simulator: its app, base URL and clients."""

    def __init__(self, app: SimApp, url: str, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.url = url
        self.http = http
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sim", max_retries=0)

    async def until(self, predicate: Callable[[EngineStatistics], bool]) -> None:
        """Wait (at most 5 s) until the engine's statistics satisfy `predicate`."""
        async with asyncio.timeout(5):
            await self.app.engine.wait_statistics(predicate)


@contextlib.asynccontextmanager
async def start(config: SimConfig) -> AsyncIterator[Sim]:
    """Serve `config` on a free loopback port for one test."""
    app = create_app(config)
    async with (
        serve_in_background(app, host="127.0.0.1", port=0) as url,
        aiohttp.ClientSession() as http,
    ):
        sim = Sim(app, url, http)
        async with sim.client:
            yield sim


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Sim]:
    """A simulator with `FAST` settings."""
    async with start(FAST) as running:
        yield running
