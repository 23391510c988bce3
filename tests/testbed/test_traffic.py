"""The generator's latency accounting and plan, with literal times (no sleeping)."""

from __future__ import annotations

import orjson
import pytest

from sluicegate.testbed import (
    COMPLETED,
    DEMO_SIM,
    FAILED,
    UNFINISHED,
    PlannedRequest,
    RequestRecord,
    StreamMeter,
    Workload,
    classify_outcome,
    estimate_capacity,
    plan_traffic,
    request_body,
)

PLANNED = PlannedRequest(0, 0.0, "acme", "interactive", 10, 50, 3)


def chat_event(content: str | None, *, role: bool = False) -> bytes:
    delta: dict[str, object] = {"content": content}
    if role:
        delta["role"] = "assistant"
    doc = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_ttft_counts_from_the_first_token_not_the_role_chunk() -> None:
    """The role-only first chunk arrives early; TTFT waits for real content."""
    record = RequestRecord(PLANNED, sent_at=100.0)
    record.meter.feed(chat_event("", role=True), 100.010)
    assert record.ttft is None
    record.meter.feed(chat_event("Hel"), 100.250)
    record.meter.feed(chat_event("lo"), 100.270)
    record.meter.feed(chat_event("!") + USAGE + DONE, 100.300)
    record.finish(COMPLETED, 100.301)
    assert record.ttft == pytest.approx(0.250)
    assert record.meter.gaps == pytest.approx([0.020, 0.030])
    assert record.itl == pytest.approx(0.025)
    assert record.e2e == pytest.approx(0.301)
    assert record.meter.tokens == 3
    assert record.meter.usage_tokens == 3
    assert record.meter.done


def test_events_split_across_reads_are_reassembled() -> None:
    """A chunk boundary in the middle of an event delays the token to the read that ends it."""
    meter = StreamMeter()
    event = chat_event("tok")
    meter.feed(event[:10], 1.0)
    assert meter.tokens == 0
    meter.feed(event[10:] + chat_event("en")[:5], 2.0)
    assert (meter.tokens, meter.first_token_at) == (1, 2.0)
    meter.feed(chat_event("en")[5:], 2.5)
    assert meter.tokens == 2
    assert meter.gaps == [0.5]


def test_tokens_in_one_read_share_its_arrival_time() -> None:
    """Coalesced events give zero gaps: what the client actually observed."""
    meter = StreamMeter()
    meter.feed(chat_event("a") + chat_event("b") + chat_event("c"), 5.0)
    assert meter.tokens == 3
    assert meter.gaps == [0.0, 0.0]


def test_completions_text_and_crlf_events() -> None:
    """`text` chunks (completions API) count too, and CRLF line ends are accepted."""
    meter = StreamMeter()
    meter.feed(b'data: {"choices":[{"index":0,"text":"x"}]}\r\n\r\n', 1.0)
    meter.feed(b"data: [DONE]\r\n\r\n", 1.1)
    assert meter.tokens == 1
    assert meter.done


def test_an_error_event_is_noted_even_when_done_follows() -> None:
    """A stream the gateway ended (evicted, paused past its TTL) is not a completed one."""
    meter = StreamMeter()
    meter.feed(chat_event("a"), 1.0)
    meter.feed(b'data: {"error":{"message":"m","type":"t","code":"evicted"}}\n\n', 1.1)
    meter.feed(b"data: [DONE]\n\n", 1.2)
    assert (meter.tokens, meter.error, meter.done) == (1, "evicted", True)


def test_garbage_event_is_a_value_error() -> None:
    """A non-JSON event fails the request instead of being miscounted."""
    with pytest.raises(ValueError, match="not JSON"):
        StreamMeter().feed(b"data: {oops\n\n", 1.0)


def test_no_e2e_unless_completed() -> None:
    """End-to-end time is only defined for completed requests."""
    record = RequestRecord(PLANNED, sent_at=1.0)
    record.meter.feed(chat_event("a"), 1.5)
    record.finish(UNFINISHED, 9.0)
    assert record.e2e is None
    assert record.ttft == pytest.approx(0.5)
    assert record.itl is None


def test_a_request_ends_exactly_once() -> None:
    """A second outcome is a bug and is refused."""
    record = RequestRecord(PLANNED, sent_at=1.0)
    record.finish(COMPLETED, 2.0)
    with pytest.raises(RuntimeError, match="already ended"):
        record.finish(FAILED, 3.0)


@pytest.mark.parametrize(
    ("status", "header", "done", "expected"),
    [
        (200, "Dispatched", True, COMPLETED),
        (200, "Dispatched", False, FAILED),
        (429, "RejectedCapacity", False, "RejectedCapacity"),
        (503, "EvictedTTL", False, "EvictedTTL"),
        (502, "Dispatched", False, FAILED),
        (500, None, False, FAILED),
    ],
)
def test_classify_outcome(status: int, header: str | None, done: bool, expected: str) -> None:
    """Refusals keep the gateway's label; a 200 needs [DONE] to count as completed."""
    assert classify_outcome(status, header, done)[0] == expected


def test_plan_is_deterministic_and_seeded() -> None:
    """Same seed, same plan; another seed, another plan; arrivals in order and in range."""
    a = plan_traffic(Workload(), rate=20, duration=10, seed=7)
    b = plan_traffic(Workload(), rate=20, duration=10, seed=7)
    c = plan_traffic(Workload(), rate=20, duration=10, seed=8)
    assert a == b
    assert a != c
    assert 120 < len(a) < 280
    assert all(0 <= x.at < 10 for x in a)
    assert [x.at for x in a] == sorted(x.at for x in a)
    for x in a:
        objective = Workload().objective(x.objective)
        assert objective.priority == x.priority
        assert objective.max_tokens[0] <= x.max_tokens <= objective.max_tokens[1]
    tenants = {t: sum(1 for x in a if x.tenant == t) for t in ("acme", "globex")}
    assert tenants["acme"] > 3 * tenants["globex"]


def test_plan_rejects_bad_rates() -> None:
    """A zero rate would never end."""
    with pytest.raises(ValueError):
        plan_traffic(Workload(), rate=0, duration=1, seed=0)


def test_capacity_estimate_follows_the_latency_model() -> None:
    """Twice the backends, twice the capacity; slower tokens, less capacity."""
    one = estimate_capacity(Workload(), DEMO_SIM, 1)
    assert estimate_capacity(Workload(), DEMO_SIM, 2) == pytest.approx(2 * one)
    slower = DEMO_SIM.replace(inter_token_latency=DEMO_SIM.inter_token_latency * 2)
    assert estimate_capacity(Workload(), slower, 1) < one


def test_request_body_is_a_streamed_chat_with_the_planned_sizes() -> None:
    """The prompt is 4 characters per planned token, as the simulator counts them."""
    doc = orjson.loads(request_body(PLANNED, "sim-model"))
    assert doc["stream"] is True
    assert doc["max_tokens"] == 3
    assert len(doc["messages"][0]["content"]) == PLANNED.prompt_tokens * 4
