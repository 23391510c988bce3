"""End to end on the simulator: the gateway pauses a running batch stream for interactive
work and resumes it later; its client (the official openai SDK) sees one whole answer."""

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

pytestmark = pytest.mark.asyncio

QUESTION = "Tell me all about sluice gates, dams and the rivers they tame. " * 3  # 48 tokens
# Echo mode: the answer is the question again, one 4-character token every 20 ms.
SIM = SimConfig(
    max_num_seqs=1,
    mode="echo",
    time_to_first_token=5.0,
    inter_token_latency=20.0,
    prefill_time_per_token=0.0,
    enable_prefix_caching=True,
    block_size=16,
)
BATCH = {"x-gateway-inference-objective": "batch"}
INTERACTIVE = {"x-gateway-inference-objective": "interactive"}


def config(url: str, **pool: Any) -> Any:
    return slot_config(url, **pool)


@contextlib.asynccontextmanager
async def running(http: str = "builtin", **pool: Any) -> AsyncIterator[tuple[Gateway, Any]]:
    app = create_app(SIM)
    async with (
        serve_many([app], "127.0.0.1", [0]) as urls,
        serve_in_background(config(urls[0], http=http, **pool)) as gw,
    ):
        yield gw, app


def sdk(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)


async def interactive(gw: Gateway, tokens: int = 3) -> str:
    """An interactive request of `tokens` tokens (its arrival pauses the batch stream;
    in echo mode its answer is its prompt)."""
    async with sdk(gw) as client:
        reply = await client.completions.create(
            model="sim-model", prompt="q" * 4 * tokens, max_tokens=tokens, extra_headers=INTERACTIVE
        )
    return reply.choices[0].text


def pausable(gw: Gateway) -> Any:
    """The tracked request that may be paused (there is one at most in these tests)."""
    entries = [e.resumable for e in gw.pools["p"].preemption._live.values() if e.resumable]
    return entries[0] if entries else None


@pytest.mark.parametrize("pauses", [1, 2])
@pytest.mark.parametrize("http", ["builtin", "uvicorn"])
async def test_a_paused_stream_reads_as_one_answer_through_the_gateway(
    pauses: int, http: str
) -> None:
    """Under the built-in server a started stream's segments go through the pump
    (`Resumable._pump`); under uvicorn, chunk by chunk."""
    async with running(http) as (gw, app):
        pool = gw.pools["p"]
        chunks: list[Any] = []
        async with sdk(gw) as client:
            stream = await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=BATCH,
            )

            async def read() -> None:
                async for chunk in stream:
                    chunks.append(chunk)  # noqa: PERF401 (the test watches it grow)

            reader = asyncio.ensure_future(read())
            for n in range(pauses):
                # A few tokens in (more after each resume), an interactive request comes.
                want = 4 + 8 * n
                await eventually(lambda: len(chunks) >= want)  # noqa: B023
                await interactive(gw)
                assert not reader.done()  # it paused, and the interactive one ran first
            await reader
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == QUESTION
        assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
        roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
        assert roles == ["assistant"]
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (48, 48)
        assert pool.preemption.pauses[-1] == pauses
        assert pool.preemption.resumes[-1] == pauses
        # Each pause lent its slot to the interactive request and got it back after it.
        loans = pool.preemption.describe()["loans"]
        assert loans == {"lent": 0, "returned": pauses, "fell_back": 0}
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        assert f'requests_paused_total{{pool="p",priority="-1"}} {pauses}.0' in text
        assert f'requests_resumed_total{{pool="p",priority="-1"}} {pauses}.0' in text
        stats = pool.controller.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0
        assert app.engine.statistics().aborted == pauses  # each pause stopped the engine
        # Each continuation's prefill hit the prefix cache but for its last block.
        assert 0 < app.engine.counters.continued_prefill_tokens <= (SIM.block_size + 1) * pauses


async def test_a_paused_non_streamed_request_answers_once_whole() -> None:
    async with running() as (gw, _):
        async with sdk(gw) as client:
            # (Chat: the simulator's echo of a completion echoes its whole prompt, so a
            # completion's continuation would echo the text so far again.)
            batch = asyncio.ensure_future(
                client.chat.completions.create(
                    model="sim-model",
                    messages=[{"role": "user", "content": QUESTION}],
                    extra_headers=BATCH,
                )
            )
            await eventually(lambda: (r := pausable(gw)) is not None and r.splicer.tokens >= 5)
            await interactive(gw)
            reply = await batch
        assert reply.choices[0].message.content == QUESTION
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (48, 48)
        assert gw.pools["p"].preemption.resumes[-1] == 1


async def test_a_client_that_leaves_while_paused_releases_everything() -> None:
    async with running() as (gw, app):
        pool = gw.pools["p"]
        body = {
            "model": "sim-model",
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
        }
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{gw.url}/v1/chat/completions", data=orjson.dumps(body), headers=BATCH
            )
            await resp.content.readany()
            # A long interactive request: the batch stream stays paused meanwhile.
            long = asyncio.ensure_future(interactive(gw, tokens=100))
            await eventually(lambda: pool.preemption.describe()["paused_requests"] != [])
            resp.close()  # the client leaves while paused
            await eventually(lambda: pool.preemption.describe()["paused_requests"] == [])
            await eventually(lambda: pool.controller.statistics().queued_requests == 0)
            assert not long.done()
            await long
        stats = pool.controller.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0
        assert pool.preemption.resumes[-1] == 0
        assert app.engine.statistics().running == 0


async def test_a_request_paused_past_its_ttl_ends_with_an_error_event() -> None:
    async with running() as (gw, _):
        pool = gw.pools["p"]
        body = {
            "model": "sim-model",
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
        }
        headers = BATCH | {"x-sluicegate-ttl-ms": "200"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{gw.url}/v1/chat/completions", data=orjson.dumps(body), headers=headers
            ) as resp:
                first = await resp.content.readany()
                long = asyncio.ensure_future(interactive(gw, tokens=50))  # 1 s: past the TTL
                rest = await resp.read()
            await long
        events = (first + rest).split(b"\n\n")
        assert events[-1] == b""  # whole events only
        assert events[-2] == b"data: [DONE]"
        error = orjson.loads(events[-3].removeprefix(b"data: "))["error"]
        assert error["code"] == "queue_timeout", error
        assert pool.preemption.pauses[-1] == 1 and pool.preemption.resumes[-1] == 0
        stats = pool.controller.statistics()
        assert stats.in_flight == 0 and stats.queued_requests == 0


async def test_preemption_off_never_pauses() -> None:
    async with running(preemption="off") as (gw, _):
        async with sdk(gw) as client:
            stream = await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": QUESTION[:40]}],
                stream=True,
                extra_headers=BATCH,
            )
            chunks = [chunk async for chunk in stream]
            assert chunks
        assert gw.pools["p"].preemption.pause_policy is None


async def test_a_pausable_request_the_backend_refuses_gets_the_refusal_as_is() -> None:
    async with running() as (gw, _), aiohttp.ClientSession() as session:
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with session.post(
            f"{gw.url}/v1/chat/completions", data=orjson.dumps(body), headers=BATCH
        ) as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
        assert "nope" in error["message"]
        stats = gw.pools["p"].controller.statistics()
        assert stats.in_flight == 0
