"""Authentication and tenants end to end: a real gateway on 127.0.0.1 in front of a
scripted upstream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import yaml

import sluicegate as sg
from sluicegate.gateway import serve_in_background

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sluicegate.gateway import Gateway

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"
BODY = orjson.dumps(
    {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
)
OBJECTIVES = [
    {"name": "interactive", "priority": 10},
    {"name": "standard", "priority": 0},
    {"name": "batch", "priority": -10},
]


def key_entry(key: str, tenant: str, **extra: Any) -> dict[str, Any]:
    return {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": tenant, **extra}


@contextlib.asynccontextmanager
async def stack(
    auth: dict[str, Any], **sections: Any
) -> AsyncIterator[tuple[Gateway, FakeUpstream, aiohttp.ClientSession]]:
    fake = FakeUpstream()
    async with serve_app(fake) as url:
        config = make_config([url], auth=auth, objectives=OBJECTIVES, **sections)
        async with (
            serve_in_background(config) as gw,
            aiohttp.ClientSession(base_url=str(gw.url)) as client,
        ):
            yield gw, fake, client


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


async def call(client: aiohttp.ClientSession, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with client.post(CHAT, data=BODY, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers


def flows(gw: Gateway) -> set[str]:
    stats = gw.pools["default"].controller.statistics()
    return {key.id for key in stats.flows}


async def test_keys_decide_identity_objective_and_what_is_forwarded() -> None:
    auth = {
        "mode": "keys",
        "keys": [
            key_entry("key-a", "team-a", objectives=["standard", "batch"]),
            key_entry("key-b", "team-b"),
        ],
    }
    pool = {"api_key": "backend-secret"}
    async with stack(auth, pool=pool) as (gw, fake, client):
        status, doc, _ = await call(client, {})
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key")
        status, doc, _ = await call(client, bearer("key-z"))
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key")
        status, doc, _ = await call(
            client, bearer("key-a", **{"x-gateway-inference-objective": "interactive"})
        )
        assert (status, doc["error"]["code"]) == (403, "objective_not_allowed")
        assert fake.requests == []
        claim = {"x-gateway-inference-fairness-id": "team-b"}
        status, _, _ = await call(client, bearer("key-a", **claim))
        assert status == 200
        assert flows(gw) == {"team-a"}  # the key's tenant, not the claimed one
        _, headers, _ = fake.requests[-1]
        assert headers["authorization"] == "Bearer backend-secret"
        assert "x-gateway-inference-fairness-id" not in headers
        # Keys never appear on the ops pages.
        async with client.get("/debug/flowcontrol") as r:
            page = await r.text()
        async with client.get("/metrics") as r:
            page += await r.text()
        assert "key-a" not in page and "backend-secret" not in page


async def test_tenant_ceiling_holds_its_requests_and_not_others() -> None:
    auth = {
        "mode": "keys",
        "keys": [key_entry("key-a", "team-a", max_in_flight=1, max_queued=1), key_entry("k", "b")],
    }
    async with stack(auth) as (gw, fake, client):
        fake.hold = asyncio.Event()
        first = asyncio.ensure_future(call(client, bearer("key-a")))
        await eventually(lambda: fake.active == 1)
        second = asyncio.ensure_future(call(client, bearer("key-a")))
        ctl = gw.pools["default"].controller
        await eventually(lambda: ctl.queued_requests() == 1)
        other = asyncio.ensure_future(call(client, bearer("k")))
        await eventually(lambda: fake.active == 2)  # team-b is served past the held one
        status, doc, headers = await call(client, bearer("key-a"))
        assert (status, doc["error"]["code"]) == (429, "queue_full")
        # A tenant's max_queued promises no place: no Retry-After, and the reason.
        assert "retry-after" not in headers and headers["x-sluicegate-retry"] == "capacity"
        assert fake.active == 2 and ctl.queued_requests() == 1
        fake.hold.set()
        results = await asyncio.gather(first, second, other)
        assert [r[0] for r in results] == [200, 200, 200]


async def test_tokens_per_minute_answers_429_with_retry_after() -> None:
    auth = {"mode": "keys", "keys": [key_entry("key-a", "team-a", tokens_per_minute=60)]}
    async with stack(auth) as (_, fake, client):
        status, _, _ = await call(client, bearer("key-a"))  # charges ~11 tokens of 60
        assert status == 200
        statuses = []
        for _ in range(8):
            status, doc, headers = await call(client, bearer("key-a"))
            statuses.append(status)
            if status == 429:
                assert doc["error"]["code"] == "tokens_per_minute_exceeded"
                assert 1 <= int(headers["retry-after"]) <= 60
                break
        assert statuses[-1] == 429
        assert len(fake.requests) == len(statuses)  # refused requests never reached it


async def test_reload_adds_and_removes_keys_under_load(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"

    def write(*entries: dict[str, Any]) -> None:
        keys_file.write_text(yaml.safe_dump({"keys": list(entries)}))

    write(key_entry("key-a", "team-a", max_in_flight=2), key_entry("key-b", "team-b"))
    auth = {"mode": "keys", "keys_file": str(keys_file)}
    async with stack(auth) as (gw, fake, client):
        config_file = tmp_path / "gateway.yaml"
        config_file.write_text(yaml.safe_dump(gw.config.model_dump(exclude_none=True)))
        gw.config_path = config_file
        fake.hold = asyncio.Event()
        ctl = gw.pools["default"].controller
        load = [asyncio.ensure_future(call(client, bearer("key-a"))) for _ in range(5)]
        load += [asyncio.ensure_future(call(client, bearer("key-b"))) for _ in range(2)]
        await eventually(lambda: fake.active == 4 and ctl.queued_requests() == 3)
        write(key_entry("key-a", "team-a", max_in_flight=3), key_entry("key-c", "team-c"))
        assert gw.reload_from_file()
        await eventually(lambda: fake.active == 5)  # team-a's new ceiling applies at once
        status, doc, _ = await call(client, bearer("key-b"))
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key")
        late = asyncio.ensure_future(call(client, bearer("key-c")))
        await eventually(lambda: fake.active == 6)
        fake.hold.set()
        results = await asyncio.gather(*load, late)
        assert [r[0] for r in results] == [200] * 8  # nothing queued or in flight was lost
        outcomes = ctl.statistics().outcomes
        assert outcomes[sg.Outcome.DISPATCHED] == 8


async def test_untrusted_peer_is_the_default_flow() -> None:
    auth = {"mode": "trusted", "trusted": {"source_cidrs": ["10.0.0.0/8"]}}
    async with stack(auth) as (gw, fake, client):
        claim = {
            "x-gateway-inference-fairness-id": "vip",
            "x-gateway-inference-objective": "interactive",
        }
        status, _, _ = await call(client, claim)
        assert status == 200
        assert flows(gw) == {"default-flow"}
        assert "x-gateway-inference-fairness-id" not in fake.requests[-1][1]


async def test_a_public_address_without_a_token_refuses_to_start() -> None:
    config = make_config(["http://127.0.0.1:9"])
    with pytest.raises(sg.ConfigError, match="auth_token"):
        async with serve_in_background(config, host="0.0.0.0"):
            pass
