"""Continuing a partial answer over HTTP, as vLLM does, spoken to by the openai client."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FAST, Sim, start

pytestmark = pytest.mark.asyncio

CONTINUE: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
QUESTION = "Tell me about sluice gates."  # 27 characters: 7 tokens


def chat(*messages: tuple[str, str]) -> Any:
    """Chat messages from (role, content) pairs."""
    return [{"role": role, "content": content} for role, content in messages]


async def test_continue_final_message_continues_the_assistant_message(sim: Sim) -> None:
    """The prompt counts the partial answer (it follows the prompt directly) and the
    reply holds only the new text."""
    partial = " the old dam"  # 12 characters: 3 tokens
    reply = await sim.client.chat.completions.create(
        model="sim-model",
        messages=chat(("user", QUESTION + "X"), ("assistant", partial)),
        max_tokens=4,
        extra_body=CONTINUE,
    )
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7 + 3, 4)
    content = reply.choices[0].message.content
    assert content is not None and not content.startswith(partial)
    assert len(content) == 16  # four new 4-character tokens
    plain = await sim.client.chat.completions.create(
        model="sim-model", messages=chat(("user", QUESTION + "X")), max_tokens=1
    )
    assert plain.usage is not None and plain.usage.prompt_tokens == 7


@pytest.mark.parametrize(
    ("messages", "options", "message"),
    [
        (chat(("user", "hi"), ("assistant", "a")), {"continue_final_message": True},
         "Cannot set both"),  # add_generation_prompt defaults to true, as in vLLM
        (chat(("user", "hi"), ("assistant", "a")), {**CONTINUE, "add_generation_prompt": True},
         "Cannot set both"),
        (chat(("user", "hi")), CONTINUE, "role `assistant`"),
        (chat(("user", "hi"), ("assistant", "a")), {"continue_final_message": "yes"},
         "must be a boolean"),
    ],
)  # fmt: skip
async def test_invalid_continuations_are_400(
    sim: Sim, messages: Any, options: dict[str, Any], message: str
) -> None:
    """vLLM's validation: both flags true, or no final assistant message, is a 400."""
    with pytest.raises(openai.BadRequestError, match=message):
        await sim.client.chat.completions.create(
            model="sim-model", messages=messages, max_tokens=1, extra_body=options
        )


async def test_echo_mode_continues_the_echo() -> None:
    """In echo mode, a continued answer echoes the rest of the message before it."""
    async with start(FAST.replace(mode="echo")) as sim:
        text = "Sluice gates hold back the river."
        first = await sim.client.chat.completions.create(
            model="sim-model", messages=chat(("user", text)), max_tokens=3
        )
        head = first.choices[0].message.content
        assert head == text[:12]
        rest = await sim.client.chat.completions.create(
            model="sim-model",
            messages=chat(("user", text), ("assistant", head)),
            extra_body=CONTINUE,
        )
        assert head + (rest.choices[0].message.content or "") == text
        assert rest.choices[0].finish_reason == "stop"


async def test_completions_continue_from_prompt_plus_text_so_far(sim: Sim) -> None:
    """A completion's continuation is its prompt plus the text so far; tokens add up."""
    prompt = "Once upon a time,"  # 17 characters: 5 tokens
    first = await sim.client.completions.create(model="sim-model", prompt=prompt, max_tokens=6)
    assert first.usage is not None and first.usage.prompt_tokens == 5
    so_far = first.choices[0].text
    again = await sim.client.completions.create(
        model="sim-model", prompt=prompt + so_far, max_tokens=2
    )
    assert again.usage is not None and again.usage.prompt_tokens == 5 + 6


async def test_tokenize_applies_the_same_template(sim: Sim) -> None:
    """/tokenize with a continued message counts what the completion's usage counts."""
    messages = chat(("user", QUESTION), ("assistant", " the old"))
    async with sim.http.post(
        sim.url + "/tokenize", json={"messages": messages, **CONTINUE}
    ) as resp:
        assert resp.status == 200
        count = (await resp.json())["count"]
    reply = await sim.client.chat.completions.create(
        model="sim-model", messages=messages, max_tokens=1, extra_body=CONTINUE
    )
    assert reply.usage is not None and reply.usage.prompt_tokens == count
    async with sim.http.post(
        sim.url + "/tokenize", json={"messages": messages, "continue_final_message": True}
    ) as resp:
        assert resp.status == 400


async def scrape(sim: Sim) -> dict[str, float]:
    """The simulator's counters and gauges by sample name."""
    async with sim.http.get(sim.url + "/metrics") as resp:
        text = await resp.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_prefix_caching_over_http_reports_vllm_metrics() -> None:
    """--enable-prefix-caching: a continuation's prefill hits; vLLM's counters say so."""
    async with start(FAST.replace(enable_prefix_caching=True, block_size=4)) as sim:
        prompt = "p" * 64  # 16 tokens: 4 blocks of 4
        first = await sim.client.completions.create(model="sim-model", prompt=prompt, max_tokens=8)
        assert sim.app.engine.statistics().evictable_blocks == (64 + 32) // 16
        await sim.client.completions.create(
            model="sim-model", prompt=prompt + first.choices[0].text, max_tokens=2
        )
        metrics = await scrape(sim)
        assert metrics["vllm:prefix_cache_queries_total"] == 16 + 24
        assert metrics["vllm:prefix_cache_hits_total"] == 20  # 6 blocks; the last token is
        # always computed, so the continuation's 24 tokens hit 5 blocks
    async with start(FAST) as sim:
        await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=1)
        metrics = await scrape(sim)
        assert metrics["vllm:prefix_cache_queries_total"] == 0


async def test_prompt_tokens_details_report_cached_tokens() -> None:
    """--enable-prompt-tokens-details: usage says how much of the prompt was cached."""
    config = FAST.replace(
        enable_prefix_caching=True, block_size=4, enable_prompt_tokens_details=True
    )
    async with start(config) as sim:
        prompt = "p" * 64  # 16 tokens: 4 blocks of 4
        first = await sim.client.completions.create(model="sim-model", prompt=prompt, max_tokens=8)
        assert first.usage is not None and first.usage.prompt_tokens_details is not None
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        stream = await sim.client.completions.create(
            model="sim-model",
            prompt=prompt + first.choices[0].text,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage async for c in stream if c.usage is not None]
        assert usage[-1].prompt_tokens_details is not None
        assert usage[-1].prompt_tokens_details.cached_tokens == 20
    async with start(FAST) as sim:  # off by default, as in vLLM
        reply = await sim.client.completions.create(model="sim-model", prompt="x", max_tokens=1)
        assert reply.usage is not None and reply.usage.prompt_tokens_details is None
