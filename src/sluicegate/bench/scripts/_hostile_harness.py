"""The harness of `benchmarks/gateway_hostile.py`: a scriptable raw-HTTP backend, the
gateway as its own process, raw requests, RSS, and a good client that keeps polling."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

__all__ = [
    "BODY",
    "CHAT",
    "Backend",
    "Pinger",
    "Script",
    "backend",
    "gateway",
    "post",
    "raw",
    "rss_mib",
]

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHAT = "/v1/chat/completions"
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


class Backend:
    """A raw HTTP/1.1 backend: counts requests and concurrency; `script` answers."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or self.ok
        self.paths: list[bytes] = []
        self.active = 0
        self.max_active = 0
        self.hold = 0.0

    async def ok(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.hold:
            await asyncio.sleep(self.hold)
        body = b'{"id": "x", "choices": []}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                if path == b"/metrics":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                self.paths.append(path)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    await self.script(reader, writer)
                    await writer.drain()
                finally:
                    self.active -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def backend(b: Backend) -> AsyncIterator[str]:
    server = await asyncio.start_server(b.handle, "127.0.0.1", 0, limit=1 << 20)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _limit_fds(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


@contextlib.asynccontextmanager
async def gateway(
    url: str, *, server: dict[str, Any] | None = None, fds: int | None = None, **pool: Any
) -> AsyncIterator[tuple[str, int]]:
    """`sluicegate serve` on a free port; yields (base URL, pid)."""
    doc = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_grace": 1, **(server or {})},
        "pools": [
            {
                "name": "default",
                "backends": [url],
                "saturation": {"type": "concurrency", "max_in_flight": 8},
                **pool,
            }
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gw.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluicegate", "serve", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_limit_fds(fds) if fds else None,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            match = re.search(rb"http://[\d.]+:\d+", line)
            assert match, line
            yield match.group().decode(), proc.pid
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def raw(base: str, data: bytes, wait_s: float = 10.0) -> int:
    """Send raw bytes (in 1 MiB writes, so this process stays responsive); the response
    status (0: none, the connection was closed or reset)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return -1
    try:
        view = memoryview(data)
        for at in range(0, len(data), 1 << 20):
            writer.write(view[at : at + (1 << 20)])
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait_s)
        return int(line.split(b" ")[1]) if line else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


def post(path: str, body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%s"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (path.encode(), extra, len(body), body))  # fmt: skip


class Pinger:
    """A well-behaved client polling /healthz: the longest gap between answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.max_gap = 0.0
        self.ok = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as s:
            last = time.perf_counter()
            while True:
                try:
                    async with s.get(
                        self.base + "/healthz", timeout=aiohttp.ClientTimeout(30)
                    ) as r:
                        await r.read()
                        self.ok += r.status == 200
                        self.failed += r.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    self.failed += 1
                now = time.perf_counter()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                await asyncio.sleep(0.01)

    def __enter__(self) -> Pinger:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


# -- probes ---------------------------------------------------------------------------------
