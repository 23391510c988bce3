"""Pause and resume against the simulator, without the gateway: cut a stream, send the
continuation `_resume` builds, splice, and read the result with the openai SDK."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import openai
import pytest

from sluicegate.gateway._resume import Kind, PausePolicy, StreamSplicer, upstream_body

from .conftest import FAST, Sim, start

pytestmark = pytest.mark.asyncio

# 25 ms a token: a client that falls behind by a few hundred milliseconds (a busy test
# machine) still pauses mid-stream rather than after the end.
CACHED = FAST.replace(enable_prefix_caching=True, block_size=16, inter_token_latency=25.0)
QUESTION = "Tell me all about sluice gates, dams and the rivers they tame. " * 3  # 189 chars


def parse(kind: Kind, data: bytes, *, stream: bool) -> Any:
    """What the official openai SDK reads from `data` (an httpx mock transport serves it)."""

    def answer(_: httpx.Request) -> httpx.Response:
        media = "text/event-stream" if stream else "application/json"
        return httpx.Response(200, content=data, headers={"content-type": media})

    transport = httpx.MockTransport(answer)
    with openai.OpenAI(
        base_url="http://sdk.invalid/v1", api_key="-", http_client=httpx.Client(transport=transport)
    ) as sdk:
        if kind == "chat":
            reply: Any = sdk.chat.completions.create(model="m", messages=[], stream=stream)
        else:
            reply = sdk.completions.create(model="m", prompt="", stream=stream)
        return list(reply) if stream else reply


@dataclasses.dataclass
class Spliced:
    """What the client got, and the text and tokens at each pause."""

    splicer: StreamSplicer
    output: bytes
    paused_at: list[tuple[str, int]]


async def splice(sim: Sim, kind: Kind, body: dict[str, Any], cuts: list[int]) -> Spliced:
    """Run `body` on the simulator, pausing once `cuts[i]` tokens were generated."""
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    splicer = StreamSplicer(body, kind, policy=PausePolicy(max_pauses=2, min_remaining_tokens=8))
    out: list[bytes] = []
    paused_at: list[tuple[str, int]] = []
    request: dict[str, Any] | None = upstream_body(body)
    while request is not None:
        cut = cuts.pop(0) if cuts else None
        paused = None
        async with sim.http.post(sim.url + path, json=request) as resp:
            assert resp.status == 200, await resp.text()
            async for data in resp.content.iter_any():
                out.append(splicer.feed(data))
                if cut is not None and splicer.tokens >= cut:
                    paused_at.append((splicer.text, splicer.tokens))
                    paused = splicer.pause()
                    assert paused is not None
                    break
        # Leaving the response early closed the connection: the engine aborted the
        # request (the pause), and its blocks went back to the cache as evictable.
        await sim.until(lambda s: s.running == 0)
        request = paused
    return Spliced(splicer, b"".join(out), paused_at)


async def scrape(sim: Sim) -> dict[str, float]:
    async with sim.http.get(sim.url + "/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line.startswith("vllm:prefix_cache"):
            name, value = line.split(" ")
            values[name.split("{")[0]] = float(value)
    return values


async def test_a_paused_echo_reads_as_if_it_never_paused() -> None:
    """Echo mode: paused twice, the client still gets the whole echo, once, one stream,
    exact usage; each continuation's prefill hit the prefix cache."""
    async with start(CACHED.replace(mode="echo")) as sim:
        body = {
            "model": "sim-model",
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        run = await splice(sim, "chat", body, cuts=[10, 25])
        assert run.splicer.pauses == 2
        chunks = parse("chat", run.output, stream=True)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == QUESTION
        assert len({c.id for c in chunks}) == 1
        assert [c.choices[0].delta.role for c in chunks if c.choices][:2] == ["assistant", None]
        assert chunks[-1].usage is not None
        total = -(-len(QUESTION) // 4)  # 48 tokens of prompt, echoed in 48 tokens
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
            total,
            total,
        )
        assert run.output.count(b"[DONE]") == 1
        metrics = await scrape(sim)
        assert metrics["vllm:prefix_cache_hits_total"] >= 2 * 48  # 3 blocks, then 4 or more


async def test_a_paused_completion_is_the_text_so_far_plus_the_rest() -> None:
    """Random mode, completions, non-streamed client: one JSON answer, k tokens + the
    rest, usage exact; the continuation's prefill hit the cache."""
    async with start(CACHED) as sim:
        prompt = "p" * 256  # 64 tokens: 4 blocks
        body = {"model": "sim-model", "prompt": prompt, "max_tokens": 40}
        run = await splice(sim, "completions", body, cuts=[12])
        assert run.output == b""  # the client asked for one answer
        [(before, k)] = run.paused_at
        assert k >= 12
        reply = parse("completions", run.splicer.response_body(), stream=False)
        assert reply.choices[0].text.startswith(before)
        assert len(reply.choices[0].text) == 40 * 4  # 4-character filler tokens
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (64, 40)
        assert reply.choices[0].finish_reason == "length"
        metrics = await scrape(sim)
        assert metrics["vllm:prefix_cache_queries_total"] == 64 + 64 + k
        # The continuation (64 + k tokens) hit every full block but the last token's.
        assert metrics["vllm:prefix_cache_hits_total"] == (64 + k - 1) // 16 * 16
