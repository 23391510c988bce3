"""Token-weighted fairness through the gateway: usage fed back, weights, reload, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson
import pytest

import sluicegate as sg
from sluicegate.gateway import load_config, parse_config, serve_in_background
from sluicegate.sim import SimConfig
from sluicegate.sim import serve_in_background as serve_sim

from .conftest import FakeUpstream, eventually, make_config, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from sluicegate.gateway import Gateway

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"
PREFIX = "inference_extension_flow_control_"
TOKEN_FAIR = {"default_band": {"fairness": "token-fair"}}


def tenant(name: str) -> dict[str, str]:
    return {"x-gateway-inference-fairness-id": name}


def flow(gw: Gateway, name: str, pool: str = "default") -> sg.FlowStatistics:
    return gw.pools[pool].controller.statistics().flows[sg.FlowKey(name, 0)]


@contextlib.asynccontextmanager
async def sim_gateway(
    sim: SimConfig, **pool: Any
) -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI]]:
    """The simulator behind a token-fair gateway, and an openai client for it."""
    async with serve_sim(sim) as sim_url:
        doc = {
            "server": {"host": "127.0.0.1", "port": 0},
            "pools": [
                {
                    "name": "sim",
                    "backends": [sim_url],
                    "saturation": {"type": "concurrency", "max_in_flight": 8},
                    **pool,
                }
            ],
            "flow_control": TOKEN_FAIR,
        }
        async with serve_in_background(parse_config(doc)) as gw:
            client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)
            try:
                yield gw, client
            finally:
                await client.close()


async def test_usage_is_fed_back_for_non_streamed_and_streamed_answers() -> None:
    """Each flow ends up charged the tokens the simulator reports, not the estimates."""
    sim = SimConfig(time_to_first_token=1, inter_token_latency=1, random_output_max=40)
    messages: Any = [{"role": "user", "content": "x" * 30}]  # 8 tokens, for both sides
    async with sim_gateway(sim) as (gw, client):
        reply = await client.chat.completions.create(
            model="sim-model", messages=messages, extra_headers=tenant("plain")
        )
        assert reply.usage is not None
        stats = flow(gw, "plain", "sim")
        assert (stats.input_tokens, stats.output_tokens) == (
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
        stream = await client.chat.completions.create(
            model="sim-model", messages=messages, stream=True, extra_headers=tenant("counted")
        )
        pieces = [c async for c in stream if c.choices and c.choices[0].delta.content]
        stats = flow(gw, "counted", "sim")
        assert (stats.input_tokens, stats.output_tokens) == (8, len(pieces))  # 256 refunded
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=tenant("usage"),
        )
        usage = [c.usage async for c in stream if c.usage is not None]
        stats = flow(gw, "usage", "sim")
        assert (stats.input_tokens, stats.output_tokens) == (
            usage[-1].prompt_tokens,
            usage[-1].completion_tokens,
        )
        assert stats.service == stats.input_tokens + 2.0 * stats.output_tokens


async def test_tokenize_estimate_asks_the_backend() -> None:
    """With token_estimate: tokenize, the prompt is counted by the backend's /tokenize."""
    sim = SimConfig(time_to_first_token=1, inter_token_latency=1)
    # The simulator joins messages with a newline: 4 + 1 + 4 characters = 3 tokens, where
    # the gateway's own character estimate says 2. A stream without usage keeps it.
    messages: Any = [{"role": "user", "content": "abcd"}, {"role": "user", "content": "efgh"}]
    async with sim_gateway(sim, token_estimate="tokenize") as (gw, client):
        stream = await client.chat.completions.create(
            model="sim-model", messages=messages, max_tokens=3, stream=True
        )
        assert len([c async for c in stream]) >= 3
        stats = flow(gw, "default-flow", "sim")
        assert (stats.input_tokens, stats.output_tokens) == (3, 3)


@contextlib.asynccontextmanager
async def fake_gateway(
    fake: FakeUpstream, **sections: Any
) -> AsyncIterator[tuple[Gateway, aiohttp.ClientSession, str]]:
    async with (
        serve_app(fake) as url,
        serve_in_background(make_config([url], **sections)) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        yield gw, client, url


def body(chars: int = 40, **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * chars}], **extra}
    )


async def test_stream_running_count_replaces_the_estimate_once_exceeded() -> None:
    """A stream longer than its max_tokens estimate is charged as it goes, then exactly."""
    fake = FakeUpstream()
    fake.chunks, fake.chunk_delay = 60, 0.002
    async with fake_gateway(fake, flow_control=TOKEN_FAIR) as (gw, client, _):
        async with client.post(CHAT, data=body(stream=True, max_tokens=10)) as r:
            seen = 0
            async for line in r.content:
                seen += line.startswith(b"data:")
                if seen == 30:
                    # The gateway counts an event before relaying it: >= 16 past 10 counted.
                    assert flow(gw, "default-flow").output_tokens >= 26
        assert flow(gw, "default-flow").output_tokens == 60


async def test_weights_from_yaml_and_reload_changes_them(tmp_path: Path) -> None:
    """flow_weights: exact ids, then the first matching pattern; reload updates flows."""
    fake = FakeUpstream()
    async with serve_app(fake) as url:
        path = tmp_path / "gw.yaml"
        path.write_text(
            f"""
pools: [{{name: default, backends: ["{url}"], saturation: {{type: concurrency}}}}]
server: {{port: 0}}
flow_control:
  default_band: {{fairness: token-fair, input_token_weight: 0.5, output_token_weight: 3}}
  flow_weights: {{tenant-a: 2, "batch-*": 0.5, "*": 1.5}}
  fairness_window: 30
"""
        )
        async with (
            serve_in_background(load_config(path)) as gw,
            aiohttp.ClientSession(base_url=str(gw.url)) as client,
        ):
            gw.config_path = path
            for name in ("tenant-a", "batch-1", "other"):
                async with client.post(CHAT, data=body(max_tokens=4), headers=tenant(name)) as r:
                    assert r.status == 200
            assert [flow(gw, n).weight for n in ("tenant-a", "batch-1", "other")] == [2, 0.5, 1.5]
            # 10 input tokens x 0.5 + 4 output tokens x 3 = 17 (no usage from this upstream)
            assert flow(gw, "tenant-a").service == 17 / 2
            path.write_text(path.read_text().replace("tenant-a: 2", "tenant-a: 4"))
            assert gw.reload_from_file()
            assert flow(gw, "tenant-a").weight == 4
            assert gw.config.flow_control.fairness_window == 30


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        # The core's own checks word these (the section is its FlowControlConfig).
        ("flow_weights: {a: 0}", "flow_weights['a'] must be a number > 0, got 0.0"),
        ("flow_weights: {a: -1}", "flow_weights['a'] must be a number > 0, got -1.0"),
        ("flow_weights: {a: .inf}", "finite"),
        ("flow_weights: {'': 1}", "flow_weights: keys must be non-empty strings, got ''"),
        ("default_band: {output_token_weight: -2}", "output_token_weight must be a number >= 0"),
        ("default_band: {fairness: token-fare}", "token-fair"),
        ("fairness_window: 0", "fairness_window must be a number of seconds > 0, got 0.0"),
    ],
)
async def test_fairness_settings_are_validated(tmp_path: Path, snippet: str, message: str) -> None:
    """Bad weights, windows and policy names are refused with the field named."""
    path = tmp_path / "gw.yaml"
    path.write_text(f"pools: [{{name: p}}]\nflow_control: {{{snippet}}}\n")
    with pytest.raises(sg.ConfigError) as info:
        load_config(path)
    assert "flow_control" in str(info.value)
    assert message in str(info.value)


async def test_token_metrics_and_fairness_figures_in_metrics_and_debug() -> None:
    """Tokens per flow (capped ids), Jain's index and the gap per band are exposed."""
    fake = FakeUpstream()
    sat = {"type": "concurrency", "max_in_flight": 1}
    async with fake_gateway(
        fake, saturation=sat, flow_control=TOKEN_FAIR, metrics={"max_fairness_ids": 2}
    ) as (gw, client, _):
        fake.hold = asyncio.Event()
        names = ["a", "a", "b", "c"]
        tasks = [
            asyncio.ensure_future(client.post(CHAT, data=body(max_tokens=5), headers=tenant(n)))
            for n in names
        ]
        ctl = gw.pools["default"].controller
        await eventually(lambda: ctl.statistics().queued_requests == 3)
        async with client.get("/debug/flowcontrol") as r:
            doc = await r.json()
        band = doc["pools"]["default"]["bands"][0]
        assert band["jain_index"] is not None
        assert band["max_service_gap"] == 10 + 2 * 5  # a was served one request, b none
        flows = {f["fairness_id"]: f for f in doc["pools"]["default"]["flows"]}
        assert flows["a"]["service"] == 20
        assert flows["a"]["weight"] == 1
        async with client.get("/metrics") as r:
            text = await r.text()
        assert f'{PREFIX}fairness_jain_index{{pool="default",priority="0"}}' in text
        assert f'{PREFIX}fairness_max_service_gap{{pool="default",priority="0"}} 20.0' in text
        fake.hold.set()
        for task in tasks:
            async with await task as r:
                assert r.status == 200
        async with client.get("/metrics") as r:
            text = await r.text()

    def line(fairness_id: str, kind: str, value: float) -> str:
        labels = f'fairness_id="{fairness_id}",kind="{kind}",priority="0"'
        return f"{PREFIX}flow_tokens_total{{{labels}}} {value}"

    assert line("a", "input", 20.0) in text
    assert line("a", "output", 10.0) in text
    assert line("b", "output", 5.0) in text
    assert line("other", "input", 10.0) in text  # c is past max_fairness_ids
