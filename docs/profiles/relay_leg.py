"""The streamed relay leg alone: aiohttp's client, the gateway's relay loop and usage
meter, with a no-op ASGI send (issue 17). Prints the marginal CPU per chunk and the
fixed CPU per stream of this process, from batches of 64 streams of 100 and 4 chunks.

Start the bench upstream on another core, then run this pinned, once per source tree
to compare (alternate them, same session):

    taskset -c 1 python -c 'from sluicegate.bench._upstream import main; main()' \\
        --port 18400 --events 100 --gap-ms 20 &
    taskset -c 0 python docs/profiles/relay_leg.py SRC_DIR ROUNDS
"""

from __future__ import annotations

import sys

sys.path.insert(0, sys.argv[1])

import asyncio
import gc
import statistics
import time
from typing import Any

import aiohttp
import uvloop

from sluicegate.bench._overhead import stream_body
from sluicegate.gateway import _proxy
from sluicegate.gateway._tokens import UsageMeter

STREAMS = 64


class _Ticket:
    output_tokens = 0

    def record_usage(self, **_: Any) -> None:
        pass


class _Server:
    read_timeout = 30.0


async def _send(_: Any) -> None:
    pass


async def _receive() -> Any:
    await asyncio.Event().wait()


async def _one(session: aiohttp.ClientSession, base: str, body: bytes) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    ex = _proxy.Exchange(scope, _receive, _send)
    ex.server = _Server()  # type: ignore[assignment]
    meter = UsageMeter(_Ticket())  # type: ignore[arg-type]
    await _proxy.relay(session, ex, base, body, stream=True, meter=meter)
    meter.close()


async def _batch(session: aiohttp.ClientSession, base: str, events: int) -> float:
    body = stream_body(events)
    began = time.process_time()
    await asyncio.gather(*(_one(session, base, body) for _ in range(STREAMS)))
    return time.process_time() - began


async def _main(rounds: int) -> None:
    base = "http://127.0.0.1:18400"
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30.0)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        await _batch(session, base, 4)  # warm-up
        gc.freeze()
        long, short = [], []
        for _ in range(rounds):
            long.append(await _batch(session, base, 100))
            short.append(await _batch(session, base, 4))
    per_long, per_short = statistics.median(long) / STREAMS, statistics.median(short) / STREAMS
    marginal = (per_long - per_short) / 96
    fixed = per_long - marginal * 100
    sys.stdout.write(
        f"{sys.argv[1]}: marginal {marginal * 1e6:.2f} us/chunk, "
        f"fixed {fixed * 1e6:.1f} us/stream\n"
    )


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[2])))
