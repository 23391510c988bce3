"""Queue events (`_queue_events.py`): SSE comments while a streamed request waits, on
loopback with the simulator; raw bytes and the official `openai` SDK."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson
import pytest

import sluicegate as sg
from sluicegate.gateway import Gateway, serve_in_background
from sluicegate.gateway._queue_events import sse_failure, wants_queue_events
from sluicegate.sim import SimConfig, create_app, serve_many

from .conftest import eventually, slot_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

EVENTS = {"x-sluicegate-queue-events": "1"}


def body(tokens: int, *, stream: bool = True) -> bytes:
    doc: Any = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": stream,
    }
    return orjson.dumps(doc)


def config(url: str, **pool: Any) -> Any:
    return slot_config(url, **pool)


#: One slot, so a second request waits.
ONE_SLOT = SimConfig(max_num_seqs=1, time_to_first_token=50, inter_token_latency=20)


@contextlib.asynccontextmanager
async def stack(app: Any = None) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession]]:
    """`app` (default: a `ONE_SLOT` simulator) behind the gateway, with a comment every
    50 ms, and a client session."""
    async with (
        serve_many([app or create_app(ONE_SLOT)], "127.0.0.1", [0]) as urls,
        serve_in_background(config(urls[0])) as gw,
        aiohttp.ClientSession() as session,
    ):
        gw.queue_events.interval = 0.05
        yield gw, session


async def post(
    session: aiohttp.ClientSession, gw: Gateway, tokens: int, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(
        f"{gw.url}/v1/chat/completions", data=body(tokens), headers=headers
    ) as r:
        return r.status, dict(r.headers), await r.read()


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


def split(raw: bytes) -> tuple[list[bytes], list[bytes]]:
    """(comment lines, data lines) of an SSE body, in order."""
    lines = [line for line in raw.split(b"\n") if line]
    return [x for x in lines if x.startswith(b":")], [x for x in lines if x.startswith(b"data:")]


def test_the_header_and_the_failure_bytes() -> None:
    assert wants_queue_events([(b"x-sluicegate-queue-events", b"1")])
    assert not wants_queue_events([(b"x-sluicegate-queue-events", b"0")])
    assert not wants_queue_events([])
    status, data = sse_failure(sg.QueueFullError("full"), queue_ms=0.0, retry_after=3)
    assert status == 429
    note, event = data.split(b"\n\n")[:2]
    assert note == b": outcome=RejectedCapacity status=429 retry_after=3"
    assert orjson.loads(event.removeprefix(b"data: "))["error"]["code"]


@pytest.mark.asyncio
async def test_a_waiting_stream_gets_headers_then_comments_then_its_answer() -> None:
    """Headers at once, comments while it waits (none inside the answer), then the
    whole answer; a request dispatched on arrival is answered as without the header."""
    async with stack() as (gw, session):
        status, headers, raw = await post(session, gw, 3, **EVENTS)  # nothing queued
        assert status == 200 and headers["x-sluicegate-outcome"] == "Dispatched"
        assert not split(raw)[0]
        first = asyncio.ensure_future(post(session, gw, 30))
        await eventually(lambda: gw.pools["p"].controller.dispatched == 2)
        url = f"{gw.url}/v1/chat/completions"
        async with session.post(url, data=body(5), headers=EVENTS) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-sluicegate-queue-events"] == "1"
            assert "x-sluicegate-outcome" not in r.headers  # not known yet
            head = await r.content.readuntil(b"\n\n")
            assert head.startswith(b": queued position=1")
            raw = head + await r.read()
        await first
        comments, data = split(raw)
        assert comments and all(c.startswith(b": queued position=1") for c in comments)
        assert raw.index(b"data:") > raw.rindex(b": queued")  # comments only before it
        assert data[-1] == b"data: [DONE]"
        assert len(data) >= 6  # role, 5 tokens (the sim's), finish, [DONE]
        assert gw.queue_events.comments == len(comments) and len(gw.queue_events) == 0
        async with session.get(f"{gw.url}/metrics") as r:
            exposed = await r.text()
        assert f"queue_event_comments_total {len(comments)}.0\n" in exposed
        assert "queue_event_streams 0.0\n" in exposed


@pytest.mark.asyncio
async def test_the_openai_sdk_ignores_the_comments_and_raises_on_an_eviction() -> None:
    async with stack() as (gw, session):
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)
        messages: Any = [{"role": "user", "content": "hi"}]
        plain = await client.chat.completions.create(
            model="sim-model", messages=messages, max_tokens=6, stream=True
        )
        expected = [c.choices[0].delta.content async for c in plain if c.choices]
        first = asyncio.ensure_future(post(session, gw, 40))
        await eventually(lambda: gw.pools["p"].controller.dispatched == 2)
        stream = await client.chat.completions.create(
            model="sim-model", messages=messages, max_tokens=6, stream=True, extra_headers=EVENTS
        )
        got = [c.choices[0].delta.content async for c in stream if c.choices]
        assert gw.queue_events.comments >= 1
        # The sim's words are random: the same shape, every token a string.
        assert len(got) == len(expected) and all(isinstance(x, str) for x in got)
        assert sum(bool(x) for x in got) == sum(bool(x) for x in expected) == 6
        # Evicted while waiting (its TTL): the status is gone, the SDK raises on the event.
        await first
        second = asyncio.ensure_future(post(session, gw, 40))
        await eventually(lambda: gw.pools["p"].controller.dispatched == 4)
        seen = gw.queue_events.comments
        evicted = await client.chat.completions.create(
            model="sim-model",
            messages=messages,
            max_tokens=6,
            stream=True,
            extra_headers={**EVENTS, "x-sluicegate-ttl-ms": "200"},
        )  # 200 at once: the headers went out when it queued
        with pytest.raises(openai.APIError, match="TTL"):
            await drain(evicted)
        assert gw.queue_events.comments > seen
        await second
        await client.close()


@pytest.mark.asyncio
async def test_an_eviction_ends_the_stream_with_an_error_event_in_raw_bytes() -> None:
    async with stack() as (gw, session):
        first = asyncio.ensure_future(post(session, gw, 40))
        await eventually(lambda: gw.pools["p"].controller.dispatched == 1)
        status, _, raw = await post(session, gw, 5, **EVENTS, **{"x-sluicegate-ttl-ms": "150"})
        assert status == 200
        comments, data = split(raw)
        assert comments[0].startswith(b": queued position=1")
        assert comments[-1] == b": outcome=EvictedTTL status=503"
        assert len(data) == 1 and orjson.loads(data[0][6:])["error"]["code"]
        assert raw.endswith(b"\n\n")
        await first


@pytest.mark.asyncio
async def test_a_request_with_only_comments_sent_may_still_be_taken_back() -> None:
    """Comments are not the answer: a batch request that waited with queue events, was
    dispatched and had no model byte out yet is requeued for an interactive arrival;
    its stream stays valid (comments, then the whole answer)."""
    sim = SimConfig(max_num_seqs=1, time_to_first_token=400, inter_token_latency=5)
    app = create_app(sim)
    async with stack(app) as (gw, session):
        pool = gw.pools["p"]
        batch = {"x-gateway-inference-objective": "batch"}
        first = asyncio.ensure_future(post(session, gw, 3, **batch))
        await eventually(lambda: pool.controller.dispatched == 1)
        waiting = asyncio.ensure_future(post(session, gw, 5, **batch, **EVENTS))
        await eventually(lambda: gw.queue_events.comments >= 1)
        await first
        await eventually(lambda: pool.controller.dispatched == 2)  # it runs, no byte yet
        status, _, _ = await post(
            session, gw, 2, **{"x-gateway-inference-objective": "interactive"}
        )
        assert status == 200
        status, _, raw = await waiting
        assert status == 200 and pool.preemption.requeued == 1
        comments, data = split(raw)
        assert comments and data[-1] == b"data: [DONE]"
        assert raw.index(b"data:") > raw.rindex(b": queued")
        assert app.engine.statistics().aborted == 1
