"""`sluicegate sim` as a real process: readiness line, --replicas, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import aiohttp
import pytest

pytestmark = [pytest.mark.asyncio, pytest.mark.e2e]


def free_port_run(count: int) -> int:
    """A port P such that P .. P+count-1 are free right now (bounded attempts)."""
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(count)]
            socks[0].bind(("127.0.0.1", 0))
            port: int = socks[0].getsockname()[1]
            try:
                for i, sock in enumerate(socks[1:], start=1):
                    sock.bind(("127.0.0.1", port + i))
            except OSError:
                continue
            return port
    raise RuntimeError("no run of free ports found")


async def test_replicas_listen_on_consecutive_ports() -> None:
    """`--replicas 2` prints one ready line per instance; each serves its own engine."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluicegate", "sim", "--port", "0", "--replicas", "2",
        "--max-num-seqs", "2", "--time-to-first-token", "1", "--inter-token-latency", "1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            lines = [(await proc.stdout.readline()).decode() for _ in range(2)]
        assert all(line.startswith("sim listening on http://127.0.0.1:") for line in lines)
        urls = [line.split()[-1] for line in lines]
        async with aiohttp.ClientSession() as http:
            for url in urls:
                async with http.get(url + "/health") as resp:
                    assert resp.status == 200
            body = {"prompt": "x", "max_tokens": 2}
            async with http.post(urls[0] + "/v1/completions", json=body) as resp:
                assert (await resp.json())["usage"]["completion_tokens"] == 2
            async with http.get(urls[1] + "/metrics") as resp:
                text = await resp.text()
        assert 'vllm:generation_tokens_total{model_name="sim-model"} 0.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0


async def test_consecutive_ports_from_a_fixed_port() -> None:
    """With `--port N`, replica i listens on N + i."""
    port = free_port_run(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluicegate", "sim", "--port", str(port), "--replicas", "3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            lines = [(await proc.stdout.readline()).decode().strip() for _ in range(3)]
        assert lines == [f"sim listening on http://127.0.0.1:{port + i}" for i in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0


async def test_a_port_in_use_prints_one_line_and_fails() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluicegate", "sim", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    assert proc.returncode != 0
    text = err.decode()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
