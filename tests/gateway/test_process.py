"""`sluicegate serve` as a real process: SIGTERM drain, SIGHUP and file-change reload."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import yaml

from .conftest import WAIT_S, FakeUpstream, eventually, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

CHAT = "/v1/chat/completions"


def write_config(path: Path, backend: str, **extra: Any) -> None:
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_grace": 10},
        "pools": [
            {
                "name": "default",
                "backends": [backend],
                "saturation": {"type": "concurrency", "max_in_flight": 1},
            }
        ],
        **extra,
    }
    # Write then rename, as editors and config managers do.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


def read(path: Path) -> bytes:
    return path.read_bytes()


@contextlib.asynccontextmanager
async def gateway_process(
    config: Path, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start `python -m sluicegate serve --config`; yields (process, base URL)."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluicegate", "serve", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
        assert b"listening on " in line, line + read(log)
        yield proc, line.decode().split("listening on ")[1].strip()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _until(client: aiohttp.ClientSession, predicate: Callable[[Any], bool]) -> None:
    """Poll /debug/flowcontrol until `predicate(document)` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        async with client.get("/debug/flowcontrol") as r:
            if predicate(await r.json()):
                return
        assert loop.time() < deadline, "state never reached"
        await asyncio.sleep(0.02)


def has_band(priority: int) -> Callable[[Any], bool]:
    return lambda doc: priority in {b["priority"] for b in doc["pools"]["default"]["bands"]}


async def test_sigterm_drains_queued_with_503_and_finishes_in_flight(tmp_path: Path) -> None:
    """SIGTERM: the queued request gets 503 at once, the running stream completes, exit 0."""
    fake = FakeUpstream()
    fake.chunks = 10
    fake.chunk_delay = 0.05
    config, log = tmp_path / "gw.yaml", tmp_path / "gw.log"
    async with serve_app(fake) as upstream:
        write_config(config, upstream)
        async with (
            gateway_process(config, log) as (proc, url),
            aiohttp.ClientSession(base_url=url) as client,
        ):
            stream = await client.post(CHAT, data=orjson.dumps({"model": "m", "stream": True}))
            assert stream.status == 200
            first = await stream.content.readline()
            assert first.startswith(b"data: ")
            queued = asyncio.ensure_future(client.post(CHAT, data=b'{"model": "m"}'))
            await _until(client, lambda doc: doc["pools"]["default"]["queued_requests"] == 1)
            proc.send_signal(signal.SIGTERM)
            async with await queued as r:
                assert r.status == 503
                assert r.headers["x-sluicegate-outcome"] == "EvictedOther"
            rest = await stream.read()
            assert rest.rstrip().endswith(b"data: [DONE]")
            assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    assert len(fake.requests) == 1


async def test_sighup_and_file_changes_reload_and_bad_files_are_refused(tmp_path: Path) -> None:
    """New objectives appear on SIGHUP and on file change; an invalid file is logged."""
    fake = FakeUpstream()
    config, log = tmp_path / "gw.yaml", tmp_path / "gw.log"
    async with serve_app(fake) as upstream:
        write_config(config, upstream)
        async with (
            gateway_process(config, log) as (proc, url),
            aiohttp.ClientSession(base_url=url) as client,
        ):
            await _until(client, lambda doc: not has_band(20)(doc))
            write_config(config, upstream, objectives=[{"name": "premium", "priority": 20}])
            proc.send_signal(signal.SIGHUP)
            await _until(client, has_band(20))
            config.write_text("pools: [{name: default, saturation: {type: concurrency, nope: 1}}]")
            await eventually(lambda: b"config reload refused" in read(log))
            assert b"pools[0].saturation.nope" in read(log)
            async with client.post(CHAT, data=b'{"model": "m"}') as r:
                assert r.status == 200
            write_config(config, upstream, objectives=[{"name": "gold", "priority": 30}])
            await _until(client, has_band(30))  # no signal: the file watch reloads
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0


async def test_a_changed_keys_file_is_reloaded_without_a_signal(tmp_path: Path) -> None:
    """auth.keys_file is watched like the config: a new key works, a removed one gets 401."""
    import hashlib

    def keys(*names: str) -> None:
        entries = [
            {"key_sha256": hashlib.sha256(n.encode()).hexdigest(), "tenant": f"t-{n}"}
            for n in names
        ]
        tmp = keys_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"keys": entries}))
        tmp.replace(keys_file)

    async def status(client: aiohttp.ClientSession, key: str) -> int:
        headers = {"authorization": f"Bearer {key}"}
        async with client.post(CHAT, data=b'{"model": "m"}', headers=headers) as r:
            return r.status

    fake = FakeUpstream()
    config, log = tmp_path / "gw.yaml", tmp_path / "gw.log"
    keys_file = tmp_path / "keys.yaml"
    keys("old")
    async with serve_app(fake) as upstream:
        write_config(config, upstream, auth={"mode": "keys", "keys_file": str(keys_file)})
        async with (
            gateway_process(config, log) as (proc, url),
            aiohttp.ClientSession(base_url=url) as client,
        ):
            assert await status(client, "old") == 200
            assert await status(client, "new") == 401
            keys("new")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while await status(client, "new") != 200:
                assert loop.time() < deadline, "keys file never reloaded"
                await asyncio.sleep(0.05)
            assert await status(client, "old") == 401
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
