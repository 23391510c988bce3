"""The fixed route table: flow-controlled routes, named pass-throughs, nothing else.

Paths are sent as raw bytes on a socket, since an HTTP client library would normalise
the very paths these tests are about.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

import sluicegate
from sluicegate.gateway import serve_in_background

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.gateway import Gateway

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@contextlib.asynccontextmanager
async def stack(
    **sections: Any,
) -> AsyncIterator[tuple[Gateway, FakeUpstream, aiohttp.ClientSession]]:
    fake = FakeUpstream()
    async with (
        serve_app(fake) as url,
        serve_in_background(make_config([url], **sections)) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        yield gw, fake, client


async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request as raw bytes; (status, body). Status 0: closed without an answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    if not data:
        return 0, b""
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def post(path: str, body: bytes = BODY) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions%0a",
        "/v1/chat/completions%0A",
        "/v1/./chat/completions",
        "/v1/chat/completions/",
        "/v1//chat/completions",
        "/v1/chat/../chat/completions",
        "/v1/%2e%2e/sim/config",
        "/v1/%2E%2E/sim/config",
        "/v1/chat/complet%69ons",
        "/v1/..%2fsim/config",
        "/v1/anything-else",
        "/sim/config",
        "/v1/load_lora_adapter",
        "/v1/chat/completions\x01",
        "/v1/chat/\x7fcompletions",
    ],
)
async def test_paths_outside_the_table_never_reach_a_backend(path: str) -> None:
    """Near-miss and smuggled paths are 404 and no byte goes upstream."""
    async with stack(saturation={"type": "concurrency", "max_in_flight": 1}) as (gw, fake, _):
        status, body = await raw_request(str(gw.url), post(path), BODY)
        assert status in (400, 404)
        if status == 404:
            assert orjson.loads(body)["error"]["code"] == "not_found"
        assert fake.requests == []
        assert gw.pools["default"].controller.statistics().submitted == 0


@pytest.mark.asyncio
async def test_smuggled_paths_cannot_exceed_the_concurrency_cap() -> None:
    """Many near-miss requests at once put nothing into a capped backend."""
    async with stack(saturation={"type": "concurrency", "max_in_flight": 1}) as (gw, fake, _):
        fake.hold = asyncio.Event()
        paths = ["/v1/chat/completions%0a", "/v1/./chat/completions", "/v1/completions/"] * 8
        statuses = await asyncio.gather(*(raw_request(str(gw.url), post(p), BODY) for p in paths))
        assert {s for s, _ in statuses} == {404}
        assert fake.requests == []
        fake.hold.set()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
)
async def test_inference_routes_are_flow_controlled(path: str) -> None:
    """Every inference route goes through the controller (outcome Dispatched)."""
    async with stack() as (gw, fake, client):
        async with client.post(path, data=BODY) as r:
            assert r.status == 200
            assert r.headers["x-sluicegate-outcome"] == "Dispatched"
        assert [p for p, _, _ in fake.requests] == [path]
        assert gw.pools["default"].controller.statistics().submitted == 1


@pytest.mark.asyncio
async def test_query_string_is_forwarded_verbatim() -> None:
    """The query string reaches the backend byte for byte."""
    seen: list[bytes] = []
    fake = FakeUpstream()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/metrics":
            seen.append(scope["query_string"])
        await fake(scope, receive, send)

    async with (
        serve_app(app) as url,
        serve_in_background(make_config([url])) as gw,
    ):
        status, _ = await raw_request(str(gw.url), post(CHAT + "?a=%20b&c=d%2Fe"), BODY)
        assert status == 200
    assert seen == [b"a=%20b&c=d%2Fe"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path"), [("POST", "/tokenize"), ("POST", "/detokenize")])
async def test_vllm_utility_routes_pass_through(method: str, path: str) -> None:
    """vLLM's utility routes are relayed without flow control."""
    async with stack() as (gw, fake, client):
        async with client.request(method, path, data=BODY) as r:
            assert r.status == 200
            assert r.headers["x-sluicegate-outcome"] == "Bypassed"
            assert (await r.json())["path"] == path
        assert [p for p, _, _ in fake.requests] == [path]
        assert gw.pools["default"].controller.statistics().submitted == 0


@pytest.mark.asyncio
async def test_wrong_method_on_a_known_route_is_405() -> None:
    """GET on an inference route is 405, not relayed."""
    async with stack() as (_, fake, client):
        async with client.get(CHAT) as r:
            assert r.status == 405
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        assert fake.requests == []


@pytest.mark.asyncio
async def test_health_follows_readiness_and_version_answers() -> None:
    """GET /health is 200 when ready and 503 when not; /version names the gateway's."""
    sat = {"type": "utilization", "scrape_interval": 0.02}
    async with stack(saturation=sat) as (gw, fake, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        async with client.get("/health") as r:
            assert r.status == 200
        async with client.get("/version") as r:
            assert r.status == 200
            assert (await r.json())["version"] == sluicegate.__version__
        await gw.drain()
        async with client.get("/health") as r:
            assert r.status == 503
        assert fake.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    """RFC 7235: the auth scheme is case-insensitive; the token is not."""
    server = {"host": "127.0.0.1", "port": 0, "auth_token": "s3cret"}
    async with stack(server=server) as (_, _fake, client):
        for path in ("/metrics", "/debug/flowcontrol"):
            async with client.get(path, headers={"authorization": f"{scheme} s3cret"}) as r:
                assert r.status == 200
            async with client.get(path, headers={"authorization": f"{scheme} S3CRET"}) as r:
                assert r.status == 401


@pytest.mark.asyncio
async def test_readiness_fails_when_every_backend_is_stale_under_fail_closed() -> None:
    """fail-closed holds every request while all metrics are stale: not ready (503)."""
    sat = {"type": "utilization", "scrape_interval": 0.02, "staleness": 0.2}
    async with stack(saturation=sat) as (_, fake, client):
        await eventually(lambda: fake.metrics_scrapes >= 1)
        async with client.get("/readyz") as r:
            assert r.status == 200
        fake.metrics_hang = True
        await asyncio.sleep(0.3)  # past staleness; the hung scrape cannot refresh
        async with client.get("/readyz") as r:
            assert r.status == 503
            assert "stale" in (await r.json())["problems"][0]
        async with client.get("/health") as r:
            assert r.status == 503
