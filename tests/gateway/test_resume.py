"""Pause and resume, sans-I/O: continuations, the safety predicate, the stitched stream.

The stitched streams are parsed by the official openai SDK (through an httpx mock
transport, so nothing listens on a socket): what it accepts, a client accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate import ConfigError
from sluicegate.gateway._resume import (
    Kind,
    PausePolicy,
    StreamSplicer,
    continuation_body,
    merge_responses,
    pause_blocker,
    upstream_body,
)

PROMPT_TOKENS = 11


class Canned:
    """An httpx transport that answers every request with the bytes set last."""

    def __init__(self) -> None:
        self.body = b""
        self.stream = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        kind = b"text/event-stream" if self.stream else b"application/json"
        return httpx.Response(200, content=self.body, headers={"content-type": kind.decode()})


CANNED = Canned()
SDK = openai.OpenAI(
    base_url="http://sdk.invalid/v1",
    api_key="-",
    max_retries=0,
    http_client=httpx.Client(transport=httpx.MockTransport(CANNED)),
)


def body_of(kind: Kind, *, stream: bool, usage: bool, max_tokens: int | None) -> dict[str, Any]:
    """A plain request body of `kind`."""
    body: dict[str, Any] = {"model": "m", "stream": stream}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "Tell me about sluice gates."}]
    else:
        body["prompt"] = "Once upon a time,"
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclasses.dataclass
class Upstream:
    """Writes one segment's SSE events the way vLLM does, with its own id and created."""

    kind: Kind
    number: int
    crlf: bool = False
    null_usage: bool = False  # OpenAI's way: `"usage": null` in every chunk but the last

    def event(self, obj: dict[str, Any] | str) -> bytes:
        data = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
        sep = "\r\n" if self.crlf else "\n"
        return f"data: {data}{sep}{sep}".encode()

    def head(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": f"seg-{self.number}", "object": obj, "created": 1000 + self.number,
                "model": "m"}  # fmt: skip

    def role(self) -> list[bytes]:
        if self.kind != "chat":
            return []
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""},
                  "logprobs": None, "finish_reason": None}  # fmt: skip
        return [self.event({**self.head(), "choices": [choice]})]

    def token(self, text: str, finish: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.kind == "chat":
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        extra = {"usage": None} if self.null_usage else {}
        return self.event({**self.head(), "choices": [choice], **extra})

    def tail(self, prompt: int, completion: int) -> list[bytes]:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}  # fmt: skip
        return [self.event({**self.head(), "choices": [], "usage": usage}), self.event("[DONE]")]


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of `sizes` (cycled)."""
    pieces, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        pieces.append(data[at : at + size])
        at, i = at + size, i + 1
    return pieces


@dataclasses.dataclass
class Run:
    """The outcome of driving a splicer through one scripted pause-and-resume."""

    out: bytes
    splicer: StreamSplicer
    bodies: list[dict[str, Any]]
    sent: list[int]  # tokens generated before each pause that happened


def drive(
    kind: Kind,
    body: dict[str, Any],
    tokens: list[str],
    cuts: list[int],
    sizes: list[int],
    partial: int,
    *,
    policy: PausePolicy,
    crlf: bool = False,
    null_usage: bool = False,
    probe: bool = False,
) -> Run:
    """Stream `tokens`, trying to pause after each count in `cuts`; resume each time.
    `probe`: ask what was generated after every piece (the splicer reads events only
    when asked, so this must change nothing)."""
    splicer = StreamSplicer(body, kind, policy=policy)
    out: list[bytes] = []
    bodies: list[dict[str, Any]] = []
    sent: list[int] = []
    start, number = 0, 0
    pending = sorted(set(cuts))
    while True:
        up = Upstream(kind, number, crlf, null_usage)
        cut = next((c for c in pending if c >= start), None)
        pending = [c for c in pending if c != cut]
        stop = len(tokens) if cut is None else cut

        def tok(i: int, up: Upstream = up) -> bytes:
            return up.token(tokens[i], "length" if i == len(tokens) - 1 else None)

        events = [*up.role(), *(tok(i) for i in range(start, stop))]
        if cut is None or cut >= len(tokens):
            events += up.tail(PROMPT_TOKENS + start, len(tokens) - start)
            stream = b"".join(events)
        else:
            following = tok(cut)  # the next event, cut part way through
            stream = b"".join(events) + following[: partial % len(following)]
        for piece in chunked(stream, sizes):
            emitted = splicer.feed(piece)
            assert emitted == b"" or emitted.endswith(b"\n\n")  # whole events only
            out.append(emitted)
            if probe:
                assert splicer.tokens >= 0 and splicer.text is not None
                assert splicer.can_pause in (True, False)
        if cut is None or cut >= len(tokens):
            return Run(b"".join(out), splicer, bodies, sent)
        continuation = splicer.pause()
        if continuation is None:  # refused: this segment simply runs on
            rest = b"".join(tok(i) for i in range(cut, len(tokens)))
            tail = rest[partial % len(tok(cut)) :]
            tail += b"".join(up.tail(PROMPT_TOKENS + start, len(tokens) - start))
            out += [splicer.feed(piece) for piece in chunked(tail, sizes)]
            return Run(b"".join(out), splicer, bodies, sent)
        bodies.append(continuation)
        sent.append(cut)
        start, number = cut, number + 1


def parse_stream(kind: Kind, data: bytes) -> list[Any]:
    """The chunks the openai SDK reads from `data`."""
    CANNED.body, CANNED.stream = data, True
    if kind == "chat":
        return list(SDK.chat.completions.create(model="m", messages=[], stream=True))
    return list(SDK.completions.create(model="m", prompt="", stream=True))


def parse_response(kind: Kind, data: bytes) -> Any:
    """The answer the openai SDK reads from `data`."""
    CANNED.body, CANNED.stream = data, False
    if kind == "chat":
        return SDK.chat.completions.create(model="m", messages=[])
    return SDK.completions.create(model="m", prompt="")


def content_of(kind: Kind, chunks: list[Any]) -> str:
    if kind == "chat":
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return "".join(c.choices[0].text for c in chunks if c.choices)


TOKEN = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["chat", "completions"]),
    tokens=st.lists(TOKEN, min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=5),
    sizes=st.lists(st.integers(1, 80), max_size=6),
    partial=st.integers(0, 500),
    stream=st.booleans(),
    usage=st.booleans(),
    crlf=st.booleans(),
    null_usage=st.booleans(),
    max_pauses=st.integers(0, 4),
)
def test_any_pauses_and_chunking_give_one_valid_stream(
    kind: Kind,
    tokens: list[str],
    cuts: list[int],
    sizes: list[int],
    partial: int,
    stream: bool,
    usage: bool,
    crlf: bool,
    null_usage: bool,
    max_pauses: int,
) -> None:
    """Content is the whole text, once; one role chunk, one [DONE] at the very end,
    the first segment's id/created/model, exact usage; never more pauses than the cap.
    Asking what was generated at any point changes nothing."""
    body = body_of(kind, stream=stream, usage=usage, max_tokens=len(tokens))
    policy = PausePolicy(max_pauses=max_pauses, min_remaining_tokens=1)
    cuts = [c for c in cuts if c < len(tokens)]
    args = (kind, body, tokens, cuts, sizes, partial)
    run = drive(*args, policy=policy, crlf=crlf, null_usage=null_usage)
    probed = drive(*args, policy=policy, crlf=crlf, null_usage=null_usage, probe=True)
    assert (probed.out, probed.bodies, probed.sent) == (run.out, run.bodies, run.sent)
    assert (probed.splicer.usage, probed.splicer.text) == (run.splicer.usage, run.splicer.text)
    text = "".join(tokens)
    # The client's first chunk names the answer: a completion cut before its first token
    # sent nothing, so its continuation's names are the ones the client sees.
    first = 1 if kind == "completions" and run.sent[:1] == [0] else 0
    names = (f"seg-{first}", 1000 + first, "m")
    assert run.splicer.pauses == len(run.bodies) <= max_pauses
    assert run.splicer.usage == (PROMPT_TOKENS, len(tokens))
    assert run.splicer.text == text
    for done, cont in zip(run.sent, run.bodies, strict=True):
        assert cont["max_tokens"] == len(tokens) - done
        assert cont["stream"] is True
        assert cont["stream_options"]["include_usage"] is True
    if not stream:
        assert run.out == b""
        reply = parse_response(kind, run.splicer.response_body())
        got = reply.choices[0].message.content if kind == "chat" else reply.choices[0].text
        assert (got, reply.id, reply.created, reply.model) == (text, *names)
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
            PROMPT_TOKENS,
            len(tokens),
        )
        assert reply.choices[0].finish_reason == "length"
        return
    assert run.out.count(b"[DONE]") == 1
    assert run.out.endswith(b"data: [DONE]\n\n") or run.out.endswith(b"data: [DONE]\r\n\r\n")
    chunks = parse_stream(kind, run.out)
    assert content_of(kind, chunks) == text
    assert {(c.id, c.created, c.model) for c in chunks} == {names}
    if kind == "chat":
        roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
        assert roles == chunks[:1]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    usages = [c.usage for c in chunks if c.usage is not None]
    if usage:
        assert chunks[-1].choices == []
        assert [(u.prompt_tokens, u.completion_tokens, u.total_tokens) for u in usages] == [
            (PROMPT_TOKENS, len(tokens), PROMPT_TOKENS + len(tokens))
        ]
    else:
        assert usages == []


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_an_unpaused_stream_passes_byte_for_byte(kind: Kind) -> None:
    """Without a pause the client's bytes are the upstream's (usage it asked for too)."""
    body = body_of(kind, stream=True, usage=True, max_tokens=3)
    up = Upstream(kind, 0)
    stream = b"".join([*up.role(), up.token("a"), up.token("b"), up.token("c", "length"),
                       *up.tail(5, 3)])  # fmt: skip
    splicer = StreamSplicer(body, kind)
    assert b"".join(splicer.feed(piece) for piece in chunked(stream, [7])) == stream
    assert splicer.done and splicer.finished and not splicer.can_pause


@pytest.mark.parametrize("asked", [True, False])
def test_usage_on_the_last_text_chunk_keeps_the_text_in_order(asked: bool) -> None:
    """Some servers put usage on the last chunk with text: it is read as it comes, after
    the text before it (which was passed on unread)."""
    body = body_of("completions", stream=True, usage=asked, max_tokens=40)
    up = Upstream("completions", 0, null_usage=True)
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    choice = {"index": 0, "text": "c", "logprobs": None, "finish_reason": "stop"}
    last = up.event({**up.head(), "choices": [choice], "usage": usage})
    splicer = StreamSplicer(body, "completions", policy=PausePolicy(min_remaining_tokens=1))
    out = splicer.feed(up.token("a") + up.token("b"))
    assert splicer.can_pause and splicer.tokens == 2  # asked mid-stream: read then
    out += splicer.feed(up.token("d") + last + up.event("[DONE]"))
    assert splicer.text == "abdc" and splicer.usage == (5, 3)
    assert (b'"prompt_tokens":5' in out) is asked
    chunks = parse_stream("completions", out)
    assert content_of("completions", chunks) == "abdc"
    assert splicer.finished and not splicer.can_pause


def test_a_long_stream_passed_on_unread_is_counted_exactly() -> None:
    """Past the bound on kept events (256 KiB), the count and the text stay exact."""
    body = body_of("chat", stream=True, usage=False, max_tokens=None)
    up = Upstream("chat", 0)
    splicer = StreamSplicer(body, "chat")
    event = up.token("x" * 1000)
    out = b"".join(splicer.feed(event) for _ in range(600))
    assert out == event * 600
    assert splicer.tokens == 600 and splicer.text == "x" * 600_000


def test_a_restarted_first_segment_is_forgotten() -> None:
    """A first segment cut before any text is sent again; nothing of it remains."""
    body = body_of("chat", stream=False, usage=False, max_tokens=5)
    splicer = StreamSplicer(body, "chat")
    assert splicer.feed(Upstream("chat", 0).role()[0]) == b""
    splicer.restart()
    up = Upstream("chat", 1)
    splicer.feed(b"".join([*up.role(), up.token("hi", "stop"), up.event("[DONE]")]))
    reply = parse_response("chat", splicer.response_body())
    assert (reply.id, reply.choices[0].message.content) == ("seg-1", "hi")


def test_usage_the_client_did_not_ask_for_is_dropped() -> None:
    """Upstream always streams usage; a client that did not ask never sees it."""
    body = body_of("chat", stream=True, usage=False, max_tokens=1)
    up = Upstream("chat", 0)
    splicer = StreamSplicer(body, "chat")
    out = splicer.feed(b"".join([*up.role(), up.token("a", "length"), *up.tail(5, 1)]))
    assert b"usage" not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert splicer.usage == (5, 1)


def test_chat_continuation_body() -> None:
    """The text so far becomes a continued assistant message; limits shrink."""
    body = {**body_of("chat", stream=False, usage=False, max_tokens=100),
            "max_completion_tokens": 90, "min_tokens": 5, "priority": -1}  # fmt: skip
    cont = continuation_body(body, "chat", " the old dam", 3)
    assert cont["messages"] == [*body["messages"], {"role": "assistant", "content": " the old dam"}]
    assert (cont["continue_final_message"], cont["add_generation_prompt"]) == (True, False)
    assert (cont["max_tokens"], cont["max_completion_tokens"], cont["min_tokens"]) == (97, 87, 2)
    assert cont["stream"] is True and cont["stream_options"] == {"include_usage": True}
    assert cont["priority"] == -1
    assert body["messages"][-1]["role"] == "user"  # the original is not modified
    again = continuation_body(cont, "chat", " let", 1)
    assert again["messages"][-1] == {"role": "assistant", "content": " the old dam let"}
    assert len(again["messages"]) == 2


def test_completions_continuation_body() -> None:
    """A completion continues from its prompt plus the text so far."""
    body = body_of("completions", stream=True, usage=True, max_tokens=10)
    cont = continuation_body(body, "completions", " there", 2)
    assert (cont["prompt"], cont["max_tokens"]) == ("Once upon a time, there", 8)
    listed = continuation_body({**body, "prompt": ["Hi"]}, "completions", "!", 1)
    assert listed["prompt"] == ["Hi!"]
    assert upstream_body({"stream": False})["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("kind", "extra", "blocked"),
    [
        ("chat", {}, None),
        ("chat", {"n": 1, "tool_choice": "none", "response_format": {"type": "text"}}, None),
        ("chat", {"n": 2}, "`n`"),
        ("chat", {"tools": [{"type": "function"}]}, "`tools`"),
        ("chat", {"tool_choice": "required"}, "`tool_choice`"),
        ("chat", {"response_format": {"type": "json_object"}}, "`response_format`"),
        ("chat", {"guided_json": {}}, "`guided_json`"),
        ("chat", {"logprobs": True}, "`logprobs`"),
        ("chat", {"stop": ["\n"]}, "`stop`"),
        ("chat", {"stream_options": {"continuous_usage_stats": True}}, "continuous_usage"),
        ("chat", {"messages": []}, "`messages`"),
        ("completions", {}, None),
        ("completions", {"logprobs": 2}, "`logprobs`"),
        ("completions", {"echo": True}, "`echo`"),
        ("completions", {"suffix": "end"}, "`suffix`"),
        ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_pause_blocker(kind: Kind, extra: dict[str, Any], blocked: str | None) -> None:
    """Only plain text generation may pause."""
    reason = pause_blocker({**body_of(kind, stream=True, usage=False, max_tokens=9), **extra}, kind)
    assert (reason is None) if blocked is None else (blocked in (reason or ""))


def test_policy_cap_and_margin() -> None:
    """The cap and the margin before max_tokens; no max_tokens means no margin."""
    policy = PausePolicy(max_pauses=2, min_remaining_tokens=10)
    assert policy.allows(pauses=1, generated=90, max_tokens=100)
    assert not policy.allows(pauses=1, generated=91, max_tokens=100)
    assert not policy.allows(pauses=2, generated=0, max_tokens=None)
    assert policy.allows(pauses=0, generated=10**6, max_tokens=None)
    with pytest.raises(ConfigError):
        PausePolicy(max_pauses=-1)
    with pytest.raises(ConfigError):
        PausePolicy(min_remaining_tokens=0)


def test_a_stream_that_carries_more_than_text_stops_being_pausable() -> None:
    """Reasoning or tool-call deltas, or logprobs, make a running stream unpausable."""
    up = Upstream("chat", 0)
    for delta in ({"reasoning_content": "hm"}, {"tool_calls": [{"index": 0}]}):
        splicer = StreamSplicer(body_of("chat", stream=True, usage=False, max_tokens=99), "chat")
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        splicer.feed(up.event({**up.head(), "choices": [choice]}))
        assert not splicer.can_pause and splicer.pause() is None
    splicer = StreamSplicer(body_of("completions", stream=True, usage=False, max_tokens=99),
                            "completions")  # fmt: skip
    logprobs: dict[str, Any] = {"index": 0, "text": "x", "logprobs": {"tokens": ["x"]}}
    splicer.feed(up.event({**up.head(), "object": "text_completion", "choices": [logprobs]}))
    assert not splicer.can_pause


def test_comments_and_error_events_pass_through() -> None:
    """SSE comments and `event: error` are not chunks: they reach the client as sent."""
    splicer = StreamSplicer(body_of("chat", stream=True, usage=False, max_tokens=99), "chat")
    data = b': keep-alive\n\nevent: error\ndata: {"error": {"message": "x"}}\n\n'
    assert splicer.feed(data) == data
    assert splicer.can_pause


def test_merge_responses() -> None:
    """Whole answers merge: contents joined, the first's id, the last's finish reason."""
    first = {
        "id": "a",
        "created": 1,
        "model": "m",
        "usage": None,
        "choices": [{"message": {"content": "Hello"}, "finish_reason": None}],
    }
    last = {"id": "b", "created": 2, "model": "m",
            "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
            "choices": [{"message": {"content": " world"}, "finish_reason": "stop"}]}  # fmt: skip
    merged = merge_responses("chat", [first, last])
    assert merged["choices"][0]["message"]["content"] == "Hello world"
    assert (merged["id"], merged["created"], merged["choices"][0]["finish_reason"]) == (
        "a",
        1,
        "stop",
    )
    # The first segment had no usage: it counts no tokens, and the prompt is the last's.
    assert merged["usage"] == {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16}


def test_near_its_end_or_at_the_cap_a_request_runs_on() -> None:
    """can_pause turns false within min_remaining_tokens of max_tokens and at the cap;
    a known prompt size is used as given."""
    policy = PausePolicy(max_pauses=1, min_remaining_tokens=3)
    body = body_of("completions", stream=True, usage=True, max_tokens=5)
    splicer = StreamSplicer(body, "completions", policy=policy, prompt_tokens=7)
    up = Upstream("completions", 0)
    splicer.feed(up.token("a") + up.token("b"))
    assert splicer.can_pause  # 3 of 5 left
    assert splicer.pause() is not None
    assert not splicer.can_pause and splicer.pause() is None  # the cap
    up = Upstream("completions", 1)
    splicer.feed(up.token("c", "length") + b"".join(up.tail(99, 3)))
    assert splicer.usage == (7, 5)  # the hint wins over the derived 99 - 2
    unpaused = StreamSplicer(body, "completions", policy=policy)
    unpaused.feed(up.token("a") + up.token("b") + up.token("c"))
    assert not unpaused.can_pause  # 2 of 5 left


def test_who_may_pause_for_whom() -> None:
    """By default only sheddable work (priority < 0) pauses, and only for priority >= 0."""
    policy = PausePolicy()
    assert policy.may_pause_for(-1, 0)
    assert policy.may_pause_for(-5, 10)
    assert not policy.may_pause_for(0, 10)  # not sheddable
    assert not policy.may_pause_for(-2, -1)  # not for sheddable work
    wide = PausePolicy(max_paused_priority=5, min_pausing_priority=-10)
    assert wide.may_pause_for(0, 1)
    assert not wide.may_pause_for(1, 1)  # never for an equal priority


def test_a_stream_ended_with_an_error_event() -> None:
    """A paused request that cannot go on ends with an error event the SDK raises."""
    body = body_of("chat", stream=True, usage=True, max_tokens=99)
    splicer = StreamSplicer(body, "chat")
    up = Upstream("chat", 0)
    out = splicer.feed(b"".join([*up.role(), up.token("Hello"), up.token(" wor")]))
    assert splicer.pause() is not None
    out += splicer.end_with_error(
        "paused past its TTL", error_type="server_error", code="ttl_expired"
    )
    assert splicer.done and splicer.feed(up.token("ld")) == b""
    assert out.count(b"[DONE]") == 1 and out.endswith(b"data: [DONE]\n\n")
    CANNED.body, CANNED.stream = out, True
    stream = SDK.chat.completions.create(model="m", messages=[], stream=True)
    seen: list[str | None] = []
    with pytest.raises(openai.APIError, match="paused past its TTL"):
        seen.extend(c.choices[0].delta.content for c in stream)
    assert "".join(filter(None, seen)) == "Hello wor"
    quiet = StreamSplicer(body_of("chat", stream=False, usage=False, max_tokens=9), "chat")
    assert quiet.end_with_error("x", error_type="server_error", code="c") == b""
