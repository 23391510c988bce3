"""The prototype proxy stacks of issue 17 relay the bench upstream's answer unchanged."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from sluicegate.bench._overhead import free_port
from sluicegate.bench._upstream import ANSWER, BODY

pytestmark = pytest.mark.e2e


def _start(code: str, *args: str, ready: bytes) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert ready in proc.stdout.readline()
    return proc


async def _post_twice(port: int) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession() as session:
        out = []
        for _ in range(2):  # the second request reuses the upstream connection
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY) as r:
                out.append((r.status, await r.read()))
        return out


@pytest.mark.parametrize("stack", ["uvicorn-aiohttp", "uvicorn-lean", "lean-lean", "splice"])
def test_each_stack_relays_the_answer(stack: str) -> None:
    """Status and body arrive as the upstream sent them, over keep-alive."""
    up_port, port = free_port(), free_port()
    upstream = _start(
        "from sluicegate.bench._upstream import main; main()",
        "--port", str(up_port),
        ready=b"ready",
    )  # fmt: skip
    try:
        proxy = _start(
            "from sluicegate.bench._stacks import main; main()",
            "--stack", stack, "--port", str(port), "--upstream", str(up_port),
            ready=b"listening",
        )  # fmt: skip
        try:
            for _ in range(50):  # uvicorn prints before it binds
                try:
                    answers = asyncio.run(_post_twice(port))
                    break
                except aiohttp.ClientConnectorError:
                    asyncio.run(asyncio.sleep(0.1))
            assert answers == [(200, ANSWER), (200, ANSWER)]
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            assert proxy.stdout is not None
            proxy.stdout.close()
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)
        assert upstream.stdout is not None
        upstream.stdout.close()
