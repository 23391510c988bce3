"""Pausing in virtual time (looptime): whatever the pause times, the upstream chunking and
the pause cap, the client's stream is the whole answer once, in order, and a request is
never paused more often than the cap allows.

The request path of `_pause.Resumable` and `_preempt.Preemption` runs for real against a
scripted upstream that continues the answer from the text in the continuation it gets
(so a lost or repeated piece would show in the client's text); the controller is left
out (a pause waits a drawn virtual time instead of a requeue).
"""

from __future__ import annotations

import asyncio
import types
from typing import TYPE_CHECKING, Any

import looptime
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluicegate.gateway._pause import Resumable
from sluicegate.gateway._preempt import Preemption
from sluicegate.gateway._proxy import Exchange
from sluicegate.gateway._resume import PausePolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TOKENS = 40
ANSWER = [f"t{i:02d} " for i in range(TOKENS)]  # 4 characters a token
PROMPT_TOKENS = 7


class Content:
    """An upstream body: `parts` one by one, `gap` virtual seconds apart."""

    def __init__(self, parts: list[bytes], gap: float) -> None:
        self.parts = parts
        self.gap = gap

    async def readany(self) -> bytes:
        await asyncio.sleep(self.gap)
        return self.parts.pop(0) if self.parts else b""

    async def pump(
        self,
        write: Callable[[bytes], bool],
        drain: Callable[[], Awaitable[None]],
        count: Callable[[bytes], object] | None,
    ) -> bytes:
        """`Response.pump`: every part to `write` as it comes, the last one returned
        unwritten; a cancel falls between two reads, or in a drain after a write."""
        while True:
            part = await self.readany()
            if count is not None:
                count(part)
            if not self.parts:
                return part
            if write(part):
                await drain()


class Upstream:
    """Streams the rest of `ANSWER` after the text the request's body already holds."""

    def __init__(self, cuts: list[int], gap: float) -> None:
        self.cuts = cuts  # how the byte stream is split into reads
        self.gap = gap
        self.requests: list[dict[str, Any]] = []

    async def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        body = orjson.loads(kwargs["data"])
        self.requests.append(body)
        done = ""
        if body.get("continue_final_message"):
            done = body["messages"][-1]["content"]
        whole = "".join(ANSWER)
        assert whole.startswith(done), "the continuation lost or repeated text"
        start = len(done) // 4
        head = {"id": f"up-{len(self.requests)}", "created": len(self.requests), "model": "m"}
        events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        events += [
            {**head, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
            for t in ANSWER[start:]
        ]
        events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        usage = {"prompt_tokens": PROMPT_TOKENS + start, "completion_tokens": TOKENS - start}
        events.append({**head, "choices": [], "usage": usage})
        data = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
        data += b"data: [DONE]\n\n"
        parts, at = [], 0
        for cut in self.cuts:
            if at + cut < len(data):
                parts.append(data[at : at + cut])
                at += cut
        parts.append(data[at:])
        content = Content(parts, self.gap)
        return types.SimpleNamespace(
            status=200,
            content_type="text/event-stream",
            headers=[],
            readany=content.readany,
            pump=content.pump,
            release=lambda: None,
            close=lambda: None,
        )


async def scenario(
    pause_at: list[float],
    cuts: list[int],
    gap: float,
    cap: int,
    margin: int,
    stream: bool,
    pumped: bool = False,
) -> None:
    """`pumped`: the server offers the ``sluicegate.body`` extension (the built-in
    server's), so a started stream goes through the pump; its writer asks for a drain
    every third part."""
    sent: list[dict[str, Any]] = []
    writes = 0

    def write(data: bytes) -> bool:
        nonlocal writes
        writes += 1
        sent.append({"type": "http.response.body", "body": data, "more_body": True})
        return writes % 3 == 0

    async def drain() -> None:
        await asyncio.sleep(gap / 2)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.get_running_loop().create_future()  # the client never leaves
        raise AssertionError

    scope: dict[str, Any] = {"method": "POST", "path": "/v1/chat/completions", "headers": []}
    if pumped:
        scope["extensions"] = {"sluicegate.body": {"write": write, "drain": drain}}
    ex = Exchange(scope, receive, send)
    policy = PausePolicy(max_pauses=cap, min_remaining_tokens=margin)
    preemption = Preemption(None, enabled=False, pause_policy=policy)  # type: ignore[arg-type]
    doc: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": TOKENS,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    res = Resumable.of(doc, "/v1/chat/completions", -1, policy)
    assert res is not None
    upstream = Upstream(cuts, gap)
    ticket = types.SimpleNamespace(priority=-1, requeues=0)

    async def handler() -> None:
        body = res.first_body(doc)
        while True:
            with preemption.track(ticket, ex, stream=stream, resumable=res):  # type: ignore[arg-type]
                await res.relay(upstream, ex, "http://up", body, stream=stream)  # type: ignore[arg-type]
                if not res.requested:
                    return
            body = res.pause(ex) or body
            await asyncio.sleep(0.05)  # queued again, then dispatched
            res.resumed()

    async def pauser() -> int:
        made = 0
        for at in sorted(pause_at):
            await asyncio.sleep(at - asyncio.get_running_loop().time())
            made += preemption.make_room(10)
        return made

    task = asyncio.ensure_future(handler())
    room = asyncio.ensure_future(pauser())
    await task
    room.cancel()
    event(f"pauses={res.splicer.pauses}")
    # Every cut, with or without text generated, counts against the cap.
    assert res.splicer.pauses <= res.cuts <= cap
    assert len(upstream.requests) == res.cuts + 1
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[-1]["more_body"] is False
    if not stream:
        answer = orjson.loads(body)
        assert answer["choices"][0]["message"]["content"] == "".join(ANSWER)
        assert answer["usage"]["completion_tokens"] == TOKENS
        return
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and body.count(b"[DONE]") == 1
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1  # the first segment the client saw
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert sum("role" in d for d in deltas) == 1
    assert "".join(d.get("content") or "" for d in deltas) == "".join(ANSWER)
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT_TOKENS, TOKENS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pause_at=st.lists(st.floats(0.0, 0.5), max_size=6),
    cuts=st.lists(st.integers(1, 200), min_size=10, max_size=60),
    gap=st.sampled_from([0.002, 0.01, 0.03]),
    cap=st.integers(1, 3),
    margin=st.integers(1, 20),
    stream=st.booleans(),
    pumped=st.booleans(),
)
def test_pausing_never_loses_repeats_or_reorders_and_keeps_the_cap(
    pause_at: list[float],
    cuts: list[int],
    gap: float,
    cap: int,
    margin: int,
    stream: bool,
    pumped: bool,
) -> None:
    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(scenario(pause_at, cuts, gap, cap, margin, stream, pumped))
    finally:
        loop.close()
