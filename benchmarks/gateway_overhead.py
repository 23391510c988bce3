"""What the gateway adds on the data path, against a minimal fast upstream on loopback.

Three processes: a raw asyncio-protocol upstream (pinned to the load core), the gateway
(`sluicegate serve`, pinned alone to the gateway core, flow control on with a
concurrency limit far above the load) and this load generator (load core). Direct and
through-gateway runs are interleaved, repeated, and reported as differences and ratios
measured in the same run; absolute figures on a shared 2-core machine are noisy.

    .venv/bin/python benchmarks/gateway_overhead.py [--rounds 3] [--gateway-core 0 --load-core 1]

Reports: added latency p50/p99 at concurrency 1 (gateway minus direct), non-streamed
req/s at concurrency 64 (both), and the gateway's CPU time per relayed SSE event (from
/proc/<pid>/stat, so only the gateway process is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, cast

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Iterator

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
STREAM_BODY = b'{"model": "m", "messages": [], "stream": true}'
ANSWER = (
    b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}'
)
EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"delta":{"content":"t"}}]}\n\n'
)


# -- the minimal upstream ------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive; JSON answers, or SSE when the body asks for a stream."""

    def __init__(self, events: int, gap: float) -> None:
        self.events, self.gap = events, gap
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            length = 0
            if (i := head.find(b"content-length:")) >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            if b'"stream": true' in body:
                asyncio.get_running_loop().create_task(self._stream(self.transport))
            else:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
                )  # fmt: skip

    async def _stream(self, transport: asyncio.Transport) -> None:
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"
        for _ in range(self.events):
            await asyncio.sleep(self.gap)
            if transport.is_closing():
                return
            transport.write(chunk)
        transport.write(b"0\r\n\r\n")


def run_upstream(port: int, events: int, gap: float) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Upstream(events, gap), "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


# -- processes -------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _process(args: list[str], ready: bytes) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if ready not in line:
            raise RuntimeError(f"{args[:4]} did not start: {line!r}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- measurements ----------------------------------------------------------------------------


async def _latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        async with session.post(url, data=BODY) as r:
            await r.read()
        out.append(time.perf_counter() - began)
    return out


async def _throughput(session: aiohttp.ClientSession, url: str, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with session.post(url, data=BODY) as r:
                await r.read()
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    return done / (time.perf_counter() - began)


async def _stream_events(session: aiohttp.ClientSession, url: str, streams: int) -> int:
    async def one() -> int:
        async with session.post(url, data=STREAM_BODY) as r:
            return len([line async for line in r.content if line.startswith(b"data: ")])

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


def _pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


async def measure(direct: str, gateway: str, gw_pid: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in (direct, gateway):  # warm both paths up
            await _latencies(session, target + "/v1/chat/completions", 200)
        for _ in range(rounds):
            lat: dict[str, list[float]] = {}
            for name, base in (("direct", direct), ("gateway", gateway)):
                lat[name] = await _latencies(session, base + "/v1/chat/completions", 1000)
            for q in (50, 99):
                d, g = _pct(lat["direct"], q), _pct(lat["gateway"], q)
                results.setdefault(f"direct p{q} ms", []).append(d * 1e3)
                results.setdefault(f"gateway p{q} ms", []).append(g * 1e3)
                results.setdefault(f"added p{q} ms", []).append((g - d) * 1e3)
            for name, base in (("direct", direct), ("gateway", gateway)):
                rps = await _throughput(session, base + "/v1/chat/completions", 4.0)
                results.setdefault(f"{name} req/s @64", []).append(rps)
            cpu = _cpu_seconds(gw_pid)
            events = await _stream_events(session, gateway + "/v1/chat/completions", 64)
            cpu = _cpu_seconds(gw_pid) - cpu
            results.setdefault("gateway CPU us/SSE event", []).append(cpu / events * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--events", type=int, default=200, help="SSE events per stream")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="ms between SSE events")
    parser.add_argument("--upstream", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        run_upstream(args.upstream, args.events, args.gap_ms / 1000)
        return
    os.sched_setaffinity(0, {args.load_core})
    up_port, gw_port = _free_port(), _free_port()
    upstream = [
        "taskset", "-c", str(args.load_core), sys.executable, __file__, "--upstream",
        str(up_port), "--events", str(args.events), "--gap-ms", str(args.gap_ms),
    ]  # fmt: skip
    gateway = [
        "taskset", "-c", str(args.gateway_core), sys.executable, "-m", "sluicegate", "serve",
        "--backend", f"http://127.0.0.1:{up_port}", "--port", str(gw_port),
        "--max-in-flight", "100000", "--log-level", "warning",
    ]  # fmt: skip
    with _process(upstream, b"ready"), _process(gateway, b"listening") as gw:
        results = asyncio.run(
            measure(
                f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}", gw.pid, args.rounds
            )
        )
    print(f"{'metric':28} {'median':>10}   rounds")
    for name, values in results.items():
        shown = " ".join(f"{v:.3f}" if v < 100 else f"{v:.0f}" for v in values)
        print(f"{name:28} {statistics.median(values):10.3f}   {shown}")


if __name__ == "__main__":
    main()
