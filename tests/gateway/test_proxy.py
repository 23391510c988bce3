"""The data path against a scriptable upstream: relay, errors, outcomes, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from sluicegate.gateway import Gateway, GatewayConfig, serve_in_background

from .conftest import FakeUpstream, eventually, free_port, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def stack(
    config: Any = None, fake: FakeUpstream | None = None, **sections: Any
) -> AsyncIterator[tuple[Gateway, FakeUpstream, aiohttp.ClientSession]]:
    """A fake upstream, a gateway in front of it, and a client session."""
    fake = fake or FakeUpstream()
    async with serve_app(fake) as url:
        cfg: GatewayConfig = config(url) if callable(config) else make_config([url], **sections)
        async with (
            serve_in_background(cfg) as gw,
            aiohttp.ClientSession(base_url=str(gw.url)) as client,
        ):
            yield gw, fake, client


def chat(stream: bool = False, **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    )


def stats(gw: Gateway) -> Any:
    return gw.pools["default"].controller.statistics()


#: Both client-facing servers: the built-in one reports a disconnect by a callback
#: (its ``sluicegate.disconnect`` extension) and takes a stream's parts from the
#: upstream's read callback (``sluicegate.body``); uvicorn gets a pending ``receive()``
#: and one ASGI message a chunk.
SERVERS = [{"http": h, "host": "127.0.0.1", "port": 0} for h in ("builtin", "uvicorn")]


@pytest.mark.asyncio
async def test_non_streamed_body_is_forwarded_unchanged_and_answer_relayed() -> None:
    """The upstream sees the exact client bytes; the client sees upstream's answer."""
    async with stack() as (gw, fake, client):
        body = b'{"model": "m",   "messages": [], "odd_field": [1, 2.50]}'
        async with client.post(CHAT, data=body, headers={"content-type": "application/json"}) as r:
            assert r.status == 200
            doc = await r.json()
            assert r.headers["x-sluicegate-outcome"] == "Dispatched"
            assert float(r.headers["x-sluicegate-queue-ms"]) >= 0
            assert r.headers["x-upstream"] == "yes"
        assert fake.requests[0][2] == body
        assert doc["path"] == CHAT
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("server", SERVERS, ids=["builtin", "uvicorn"])
async def test_stream_is_relayed_chunk_by_chunk(server: dict[str, Any]) -> None:
    """Each SSE event reaches the client before the upstream sends the next one."""
    fake = FakeUpstream()
    fake.hold = None
    async with stack(fake=fake, server=server) as (gw, fake, client):
        fake.chunks = 3
        fake.chunk_delay = 0.01  # one read a chunk: the relay's per-chunk path, not one read
        async with client.post(CHAT, data=chat(stream=True)) as r:
            assert r.status == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert "content-length" not in r.headers
            events = [line async for line in r.content if line.strip()]
        assert len(events) == 4
        assert events[-1] == b"data: [DONE]\n"
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
async def test_stream_chunks_arrive_before_the_stream_ends() -> None:
    """The first event is readable while the upstream still holds the rest back."""
    async with stack() as (_, fake, client):
        fake.chunks = 1000
        fake.chunk_delay = 0.05
        async with client.post(CHAT, data=chat(stream=True)) as r:
            first = await asyncio.wait_for(r.content.readline(), WAIT)
            assert first.startswith(b"data: {")
        await eventually(lambda: fake.active == 0)


WAIT = 5.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"model": "m", "x": "' + b"a" * 2000 + b'"}', 413, "request_too_large"),
    ],
)
async def test_bad_bodies_are_refused_with_openai_errors(
    body: bytes, status: int, code: str
) -> None:
    """Malformed JSON is a 400 and a body over max_body_bytes a 413, never proxied."""
    server = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 1000}
    async with stack(server=server) as (_, fake, client):
        async with client.post(CHAT, data=body) as r:
            assert r.status == status
            err = (await r.json())["error"]
            assert err["code"] == code
            assert {"message", "type", "code"} <= err.keys()
            assert r.headers["x-sluicegate-outcome"] == "Invalid"
            assert r.headers["x-sluicegate-queue-ms"] == "0.000"
        assert fake.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-gateway-inference-fairness-id", "bad id with spaces"),
        ("x-llm-d-inference-fairness-id", "x" * 200),
        ("x-gateway-inference-objective", "-leading-dash"),
        ("x-sluicegate-ttl-ms", "soon"),
        ("x-sluicegate-ttl-ms", "0"),
        ("x-slo-ttft-ms", "-5"),
    ],
)
async def test_bad_classification_headers_get_400_naming_the_header(
    header: str, value: str
) -> None:
    """Every malformed classification header is a 400 whose error names it."""
    async with stack() as (_, fake, client):
        async with client.post(CHAT, data=chat(), headers={header: value}) as r:
            assert r.status == 400
            err = (await r.json())["error"]
            assert err["param"] == header
            assert header in err["message"]
        assert fake.requests == []


@pytest.mark.asyncio
async def test_unknown_model_gets_404_naming_served_models() -> None:
    """Without a default pool, an unknown model is a 404 listing what is served."""
    async with stack(pool={"models": ["llama-8b", "qwen-*"]}) as (_, fake, client):
        async with client.post(CHAT, data=chat(model="gpt-5")) as r:
            assert r.status == 404
            err = (await r.json())["error"]
            assert err["code"] == "model_not_found"
            assert "llama-8b" in err["message"]
            assert "qwen-*" in err["message"]
        async with client.post(CHAT, data=chat(model="qwen-7b")) as r:
            assert r.status == 200
        assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_upstream_connect_error_is_502() -> None:
    """A backend nobody listens on gives a 502 in OpenAI format; the slot is released."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with (
        serve_in_background(make_config([dead])) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
        client.post(CHAT, data=chat()) as r,
    ):
        assert r.status == 502
        assert (await r.json())["error"]["type"] == "upstream_error"
        assert r.headers["x-sluicegate-outcome"] == "Dispatched"
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_5xx_before_any_byte_is_502(stream: bool) -> None:
    """A 5xx from the backend becomes a 502 with the backend's detail; no retry."""
    async with stack() as (gw, fake, client):
        fake.mode = "500"
        async with client.post(CHAT, data=chat(stream=stream)) as r:
            assert r.status == 502
            assert "HTTP 500" in (await r.json())["error"]["message"]
        assert len(fake.requests) == 1
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("server", SERVERS, ids=["builtin", "uvicorn"])
async def test_upstream_abort_mid_stream_ends_the_stream_with_an_error_event(
    server: dict[str, Any],
) -> None:
    """After bytes were relayed, an upstream failure ends the SSE stream with an
    OpenAI-shaped error event; the backend's address is not in it."""
    async with stack(server=server) as (gw, fake, client):
        fake.mode = "abort"
        fake.chunks = 5
        async with client.post(CHAT, data=chat(stream=True)) as r:
            assert r.status == 200
            events = [e for e in (await r.read()).split(b"\n\n") if e]
        assert events[0].startswith(b'data: {"id"')
        error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
        assert error["code"] == "bad_gateway"
        assert "127.0.0.1" not in error["message"]
        assert len(fake.requests) == 1
        await eventually(lambda: stats(gw).in_flight == 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("server", SERVERS, ids=["builtin", "uvicorn"])
async def test_disconnect_while_queued_never_reaches_a_backend(server: dict[str, Any]) -> None:
    """A client leaving while queued is evicted (EvictedCancelled); nothing is sent upstream."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with stack(saturation=sat, server=server) as (gw, fake, client):
        fake.hold = asyncio.Event()
        first = asyncio.ensure_future(client.post(CHAT, data=chat()))
        await eventually(lambda: len(fake.requests) == 1)
        second = asyncio.ensure_future(client.post(CHAT, data=chat()))
        await eventually(lambda: stats(gw).queued_requests == 1)
        second.cancel()
        await eventually(lambda: stats(gw).queued_requests == 0)
        outcomes = stats(gw).outcomes
        fake.hold.set()
        async with await first as r:
            assert r.status == 200
        assert len(fake.requests) == 1
        assert outcomes[_outcome("EvictedCancelled")] == 1
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("server", SERVERS, ids=["builtin", "uvicorn"])
async def test_disconnect_while_streaming_closes_the_upstream_request(
    server: dict[str, Any],
) -> None:
    """A client leaving mid-stream makes the gateway drop the upstream connection."""
    async with stack(server=server) as (gw, fake, client):
        fake.chunks = 100_000
        fake.chunk_delay = 0.02
        r = await client.post(CHAT, data=chat(stream=True))
        await r.content.readline()
        assert fake.active == 1
        r.close()
        await eventually(lambda: fake.active == 0)
        assert fake.disconnects == 1
        await eventually(lambda: stats(gw).in_flight == 0)


def _outcome(label: str) -> Any:
    import sluicegate as sg

    return sg.Outcome(label)


@pytest.mark.asyncio
async def test_queue_full_without_a_promise_is_429_without_retry_after() -> None:
    """A band at max_requests rejects with 429. Nothing left the band yet, so no place
    can be promised: no Retry-After (it is sent only as a promise), and the reason."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    fc = {"default_band": {"max_requests": 1}}
    async with stack(saturation=sat, flow_control=fc) as (gw, fake, client):
        fake.hold = asyncio.Event()
        running = asyncio.ensure_future(client.post(CHAT, data=chat()))
        await eventually(lambda: len(fake.requests) == 1)
        queued = asyncio.ensure_future(client.post(CHAT, data=chat()))
        await eventually(lambda: stats(gw).queued_requests == 1)
        async with client.post(CHAT, data=chat()) as r:
            assert r.status == 429
            assert "retry-after" not in r.headers
            assert r.headers["x-sluicegate-retry"] == "starved"
            assert r.headers["x-sluicegate-outcome"] == "RejectedCapacity"
            assert (await r.json())["error"]["code"] == "queue_full"
        fake.hold.set()
        for task in (running, queued):
            async with await task as r:
                assert r.status == 200
        assert stats(gw).in_flight == 0


@pytest.mark.asyncio
async def test_ttl_expiry_is_503_and_ttl_header_is_capped() -> None:
    """A request waiting past its x-sluicegate-ttl-ms gets 503 queue_timeout."""
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with stack(saturation=sat) as (_, fake, client):
        fake.hold = asyncio.Event()
        running = asyncio.ensure_future(client.post(CHAT, data=chat()))
        await eventually(lambda: len(fake.requests) == 1)
        headers = {"x-sluicegate-ttl-ms": "50", "x-gateway-inference-fairness-id": "tenant-a"}
        async with client.post(CHAT, data=chat(), headers=headers) as r:
            assert r.status == 503
            assert r.headers["x-sluicegate-outcome"] == "EvictedTTL"
            assert float(r.headers["x-sluicegate-queue-ms"]) >= 50
            assert (await r.json())["error"]["code"] == "queue_timeout"
        fake.hold.set()
        async with await running as r:
            assert r.status == 200
        assert len(fake.requests) == 1
