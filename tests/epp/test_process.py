"""`sluicegate epp` as a process: it serves, answers, and drains on SIGTERM (exit 0)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest

from sluicegate.epp import EnvoyEmulator

from .conftest import BODY, A

if TYPE_CHECKING:
    from pathlib import Path


def test_core_and_gateway_imports_do_not_load_grpc() -> None:
    code = (
        "import sys, sluicegate, sluicegate.gateway; "
        "bad = [m for m in sys.modules if m.split('.')[0] in {'grpc', 'envoy', 'google'}]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_process_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "server: {host: 127.0.0.1}\n"
        f"pools: [{{name: default, backends: ['http://{A}'], "
        "saturation: {type: concurrency, max_in_flight: 1}}]\n",
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "sluicegate", "epp", "--config", str(config)],
        *["--grpc-port", "0", "--metrics-port", "0", "--log-level", "warning"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "listening on grpc" in line, line
        target = line.split("grpc ")[1].split(",")[0]
        metrics = line.split("metrics ")[1].strip()
        async with EnvoyEmulator(target) as envoy:
            holder = envoy.open()
            assert (await holder.request(BODY)).endpoint == A
            queued = envoy.open()
            waiting = asyncio.create_task(queued.request(BODY))
            await eventually_queued(metrics)
            proc.send_signal(signal.SIGTERM)
            decision = await waiting
            assert decision.status == 503  # queued: answered through an ImmediateResponse
            await holder.respond()  # in flight: finishes during the drain
            await holder.finish()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def eventually_queued(metrics_url: str) -> None:
    queued = 0
    async with aiohttp.ClientSession() as session:

        async def refresh() -> None:
            nonlocal queued
            async with session.get(metrics_url + "/debug/flowcontrol") as r:
                queued = orjson.loads(await r.read())["pools"]["default"]["queued_requests"]

        for _ in range(2000):
            await refresh()
            if queued == 1:
                return
            await asyncio.sleep(0.005)
    raise AssertionError("the request never queued")


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_process_watches_the_objectives_directory(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1}}\npools: [{{name: default, backends: ['http://{A}']}}]\n",
        encoding="utf-8",
    )
    objectives = tmp_path / "objectives"
    objectives.mkdir()
    manifest = "kind: InferenceObjective\nmetadata: {{name: {name}}}\nspec: {{priority: {p}}}\n"
    (objectives / "a.yaml").write_text(manifest.format(name="a", p=3), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "sluicegate", "epp", "--config", str(config)],
        *["--objectives", str(objectives), "--grpc-port", "0", "--metrics-port", "0"],
        *["--log-level", "warning"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        metrics = line.split("metrics ")[1].strip()
        assert await _objectives(metrics) == {"a": 3}
        (objectives / "b.yaml").write_text(manifest.format(name="b", p=-4), encoding="utf-8")
        async with aiohttp.ClientSession() as session:
            for _ in range(1000):
                async with session.get(metrics + "/debug/flowcontrol") as r:
                    doc = orjson.loads(await r.read())
                if doc["objectives"] == {"a": 3, "b": -4}:
                    break
                await asyncio.sleep(0.01)
        assert doc["objectives"] == {"a": 3, "b": -4}
        priorities = {b["priority"] for b in doc["pools"]["default"]["bands"]}
        assert priorities >= {3, 0, -4}  # the new band exists: reconcile_priorities ran
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _objectives(metrics_url: str) -> dict[str, int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(metrics_url + "/debug/flowcontrol") as r,
    ):
        doc = orjson.loads(await r.read())
    objectives: dict[str, int] = doc["objectives"]
    return objectives
