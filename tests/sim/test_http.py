"""The HTTP surface, spoken to by the official openai client and aiohttp."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest

from .conftest import FAST, Sim, start

pytestmark = pytest.mark.asyncio

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about sluice gates."},
]


async def test_chat_non_streamed(sim: Sim) -> None:
    """A chat completion has content, finish_reason and usage."""
    reply = await sim.client.chat.completions.create(
        model="sim-model", messages=MESSAGES, max_tokens=7
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


async def test_chat_streamed_with_usage(sim: Sim) -> None:
    """A streamed chat sends the role, one chunk per token, finish_reason, then usage."""
    stream = await sim.client.chat.completions.create(
        model="alias",
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices]
    assert len(contents) == 5 and all(contents)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert {c.id for c in chunks} == {chunks[0].id}


async def test_completions_non_streamed_and_streamed(sim: Sim) -> None:
    """/v1/completions answers in both forms with the same token count."""
    reply = await sim.client.completions.create(model="sim-model", prompt="abc" * 10, max_tokens=4)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (8, 4)
    stream = await sim.client.completions.create(
        model="sim-model",
        prompt="abc" * 10,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert [c.choices[0].text != "" for c in chunks[:-1]] == [True] * 4
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12


async def test_stream_without_usage_option_has_no_usage_chunk(sim: Sim) -> None:
    """Without include_usage, the stream ends with the finish chunk and [DONE]."""
    stream = await sim.client.chat.completions.create(
        model="sim-model", messages=MESSAGES, max_tokens=2, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_sse_framing_matches_vllm(sim: Sim) -> None:
    """Every event is `data: <json>` followed by a blank line; the last is [DONE]."""
    body = {"prompt": "hi", "max_tokens": 3, "stream": True}
    async with sim.http.post(sim.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = await resp.read()
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ")
        assert orjson.loads(event[6:])["object"] == "text_completion"


async def test_random_length_without_max_tokens_finishes_with_stop(sim: Sim) -> None:
    """Without max_tokens the output length is drawn (<= random_output_max), reason stop."""
    reply = await sim.client.completions.create(model="sim-model", prompt="x")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert 1 <= reply.usage.completion_tokens <= FAST.random_output_max


async def test_echo_mode_repeats_the_last_message() -> None:
    """In echo mode the answer is the prompt (the last message), capped by max_tokens."""
    async with start(FAST.replace(mode="echo")) as sim:
        text = "The quick brown fox."
        reply = await sim.client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": text}]
        )
        assert reply.choices[0].message.content == text
        assert reply.choices[0].finish_reason == "stop"
        capped = await sim.client.completions.create(model="sim-model", prompt=text, max_tokens=2)
        assert capped.choices[0].text == text[:8]
        assert capped.choices[0].finish_reason == "length"


async def test_models_health_and_tokenize(sim: Sim) -> None:
    """/v1/models lists the served names; /health is 200; /tokenize matches usage."""
    models = await sim.client.models.list()
    assert [m.id for m in models.data] == ["sim-model", "alias"]
    async with sim.http.get(sim.url + "/health") as resp:
        assert resp.status == 200
    prompt = "How many tokens is this prompt?"
    async with sim.http.post(sim.url + "/tokenize", json={"prompt": prompt}) as resp:
        tokens = await resp.json()
    reply = await sim.client.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
    assert reply.usage is not None
    assert tokens["count"] == len(tokens["tokens"]) == reply.usage.prompt_tokens
    assert tokens["max_model_len"] == FAST.max_model_len
    async with sim.http.post(sim.url + "/tokenize", json={"messages": MESSAGES}) as resp:
        assert (await resp.json())["count"] > 1


async def test_errors_are_openai_errors(sim: Sim) -> None:
    """Unknown model is 404, too long is 400, bad JSON is 400, unknown path is 404."""
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await sim.client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=10**6)
    async with sim.http.post(sim.url + "/v1/completions", data=b"{") as resp:
        assert resp.status == 400
        assert "error" in await resp.json()
    async with sim.http.get(sim.url + "/nowhere") as resp:
        assert resp.status == 404
    async with sim.http.get(sim.url + "/v1/completions") as resp:
        assert resp.status == 405


async def test_waiting_queue_full_is_429() -> None:
    """With no room to wait, a request beyond max-num-seqs gets 429 at once."""
    config = FAST.replace(max_num_seqs=1, max_waiting_queue_length=0, inter_token_latency=1000.0)
    async with start(config) as sim:
        body = {"prompt": "x", "max_tokens": 50, "stream": True}
        async with sim.http.post(sim.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            with pytest.raises(openai.RateLimitError):
                await sim.client.completions.create(model="sim-model", prompt="y", max_tokens=1)


async def test_disconnect_frees_the_batch_slot(sim: Sim) -> None:
    """Closing a stream mid-way drops the running count and frees KV immediately."""
    stream = await sim.client.chat.completions.create(
        model="sim-model", messages=MESSAGES, max_tokens=1000, stream=True
    )
    async for _ in stream:
        break
    assert sim.app.engine.statistics().running == 1
    await stream.close()
    await sim.until(lambda s: s.running == 0)
    stats = sim.app.engine.statistics()
    assert (stats.kv_used_tokens, stats.aborted) == (0, 1)


async def test_disconnect_while_queued_leaves_the_queue() -> None:
    """A client that gives up while its request waits in the engine leaves the queue."""
    async with start(FAST.replace(max_num_seqs=1, inter_token_latency=1000.0)) as sim:
        body = {"prompt": "x", "max_tokens": 50, "stream": True}
        async with sim.http.post(sim.url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            # Non-streamed, so the client is still waiting for its response headers.
            queued = {"prompt": "x", "max_tokens": 1}
            waiter = asyncio.ensure_future(sim.http.post(sim.url + "/v1/completions", json=queued))
            await sim.until(lambda s: s.waiting == 1)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            await sim.until(lambda s: s.waiting == 0)
        await sim.until(lambda s: s.running == 0)


async def test_priority_field_is_accepted() -> None:
    """vLLM's `priority` (the openai client's extra_body) orders the engine's waiting
    queue under the `priority` policy: lower first, whatever the arrival order."""
    async with start(FAST.replace(max_num_seqs=1, scheduling_policy="priority")) as sim:
        blocker = await sim.client.completions.create(
            model="sim-model", prompt="x", max_tokens=2000, stream=True
        )
        await sim.until(lambda s: s.running == 1)
        order: list[int] = []

        async def one(priority: int) -> None:
            reply = await sim.client.completions.create(
                model="sim-model", prompt="x", max_tokens=1, extra_body={"priority": priority}
            )
            assert reply.usage is not None
            order.append(priority)

        tasks = [asyncio.create_task(one(5))]
        await sim.until(lambda s: s.waiting == 1)
        tasks.append(asyncio.create_task(one(-3)))
        await sim.until(lambda s: s.waiting == 2)
        await blocker.close()  # frees the one slot: the engine picks the next waiter
        await asyncio.gather(*tasks)
        assert order == [-3, 5]


async def test_many_concurrent_streams_all_complete() -> None:
    """Forty streams through four slots all complete with the right token counts."""
    async with start(FAST.replace(kv_cache_size=400)) as sim:

        async def one(i: int) -> int:
            stream = await sim.client.completions.create(
                model="sim-model", prompt="p" * (4 * i + 4), max_tokens=10, stream=True
            )
            return sum([1 async for c in stream if c.choices and c.choices[0].text])

        assert await asyncio.gather(*(one(i) for i in range(40))) == [10] * 40
        stats = sim.app.engine.statistics()
        assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)
