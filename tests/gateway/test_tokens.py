"""Token accounting: estimates from bodies, usage found in answers and counted in streams.

Coroutines only so pytest-asyncio owns the loop (see test_units.py).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate.gateway._tokens import (
    REPORT_EVERY,
    UsageMeter,
    estimate_input_tokens,
    estimate_output_tokens,
    find_usage,
)

pytestmark = pytest.mark.asyncio


class FakeTicket:
    """Records `record_usage` calls; starts charged with an output estimate."""

    def __init__(self, output_tokens: int = 256) -> None:
        self.output_tokens = output_tokens
        self.calls: list[tuple[int | None, int | None]] = []
        self.finals: list[bool] = []

    def record_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        final: bool = True,
    ) -> None:
        self.calls.append((input_tokens, output_tokens))
        self.finals.append(final)


def meter(estimate: int = 256) -> tuple[UsageMeter, FakeTicket]:
    ticket = FakeTicket(estimate)
    return UsageMeter(ticket), ticket  # type: ignore[arg-type]  # duck-typed ticket


def event(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


TOKEN = event({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "tok"}}]})
ROLE = event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
USAGE = event(
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
)


async def test_input_estimates_from_chat_completion_and_embedding_bodies() -> None:
    """Prompt characters / 4, rounded up; token-id prompts count exactly; else None."""
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url"}]
    chat = {"messages": [{"role": "user", "content": "x" * 9}, {"content": parts}, "junk"]}
    assert estimate_input_tokens(chat) == 4  # 13 characters
    assert estimate_input_tokens({"prompt": "x" * 8}) == 2
    assert estimate_input_tokens({"prompt": ["ab", "cd", "e"]}) == 2
    assert estimate_input_tokens({"prompt": [1, 2, 3]}) == 3
    assert estimate_input_tokens({"input": "x" * 5}) == 2
    assert estimate_input_tokens({"prompt": {"odd": 1}}) is None
    assert estimate_input_tokens({"model": "m"}) is None


async def test_output_estimate_is_the_body_limit_or_none() -> None:
    """max_completion_tokens wins over max_tokens; absent or invalid values give None."""
    assert estimate_output_tokens({"max_tokens": 30, "max_completion_tokens": 20}) == 20
    assert estimate_output_tokens({"max_tokens": 30}) == 30
    assert estimate_output_tokens({"max_tokens": "30"}) is None
    assert estimate_output_tokens({"max_tokens": True}) is None
    assert estimate_output_tokens({}) is None


async def test_usage_is_found_from_the_end_without_parsing_the_body() -> None:
    """The last usage object is decoded, nested details included; null or absent: None."""
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 99}'}}],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 34,
                "completion_tokens_details": {"reasoning_tokens": 3},
            },
        }
    )
    assert find_usage(body) == (12, 34)
    assert find_usage(b'{"usage": {"prompt_tokens": 3, "total_tokens": 3}}') == (3, None)
    assert find_usage(b'{"choices": [], "usage": null}') is None
    assert find_usage(b'{"choices": []}') is None
    assert find_usage(b'{"usage": {"prompt_tokens": 3,') is None  # cut short


async def test_non_streamed_usage_and_error_statuses() -> None:
    """A 200 answer reports its usage; an error status refunds the output estimate."""
    m, ticket = meter()
    m.body(200, orjson.dumps({"usage": {"prompt_tokens": 4, "completion_tokens": 9}}))
    m.close()
    assert ticket.calls == [(4, 9)]
    m, ticket = meter()
    m.body(400, b'{"error": {"message": "too long"}}')
    m.close()
    assert ticket.calls == [(0, 0)]
    m, ticket = meter()
    m.body(200, b'{"choices": []}')  # a backend that reports no usage: the estimate stands
    m.close()
    assert ticket.calls == []


async def test_only_complete_answers_teach_the_output_estimate() -> None:
    """Running counts, errors and streams cut short are not final; [DONE] and usage are."""
    m, ticket = meter(estimate=1)
    m.begin(200)
    for _ in range(40):
        m.chunk(TOKEN)
    m.close()  # cut short: no [DONE]
    assert ticket.finals and not any(ticket.finals)
    m, ticket = meter(estimate=1)
    m.begin(200)
    m.chunk(TOKEN * 3 + b"data: [DONE]\n\n")
    m.close()
    assert ticket.calls[-1] == (None, 3) and ticket.finals[-1] is True
    m, ticket = meter()
    m.body(500, b"{}")
    assert ticket.finals == [False]
    m, ticket = meter()
    m.body(200, orjson.dumps({"usage": {"prompt_tokens": 4, "completion_tokens": 9}}))
    assert ticket.finals == [True]


async def test_stream_counts_events_and_reports_past_the_estimate() -> None:
    """Role and [DONE] events are not tokens; reports come every REPORT_EVERY past the
    estimate, and the final count replaces the estimate when the stream ends."""
    m, ticket = meter(estimate=10)
    m.begin(200)
    m.chunk(ROLE + TOKEN)
    for _ in range(24):
        m.chunk(TOKEN)
    assert ticket.calls == []  # 25 counted: not yet REPORT_EVERY past the estimate of 10
    m.chunk(TOKEN * 2 + b"data: [DONE]\n\n")
    assert ticket.calls == [(None, 10 + REPORT_EVERY + 1)]
    m.close()
    assert ticket.calls[-1] == (None, 27)
    m, ticket = meter(estimate=256)
    m.begin(200)
    m.chunk(ROLE)
    m.chunk(TOKEN * 3)
    m.close()
    assert ticket.calls == [(None, 3)]  # an over-estimate is refunded at the end


async def test_stream_usage_chunk_replaces_the_count_even_when_split() -> None:
    """A usage chunk split over two reads is still found; counting stops after it."""
    m, ticket = meter()
    m.begin(200)
    m.chunk(TOKEN * 3)
    nulls = event({"choices": [{"delta": {"content": "x"}}], "usage": None})
    m.chunk(nulls)  # OpenAI sends usage: null on every chunk when include_usage is on
    half = len(USAGE) // 2
    m.chunk(USAGE[:half])
    m.chunk(USAGE[half:])
    m.chunk(TOKEN + b"data: [DONE]\n\n")
    m.close()
    assert ticket.calls == [(7, 5)]


async def test_stream_error_status_and_failure_before_any_byte_refund_output() -> None:
    """An error status or a failed request means nothing was generated."""
    m, ticket = meter()
    m.begin(429)
    m.chunk(b'{"error": {}}')
    m.close()
    assert ticket.calls == [(0, 0)]
    m, ticket = meter()
    m.failed()
    m.close()
    assert ticket.calls == [(0, 0)]


async def test_output_estimate_is_clamped() -> None:
    """A client's absurd max_tokens is charged as MAX_OUTPUT_ESTIMATE at most."""
    from sluicegate.gateway._tokens import MAX_OUTPUT_ESTIMATE

    assert estimate_output_tokens({"max_tokens": 2**63 - 1}) == MAX_OUTPUT_ESTIMATE
    assert estimate_output_tokens({"max_completion_tokens": 100}) == 100
