"""Probes of the gateway against hostile clients and broken backends (issue 12).

Each probe starts `sluicegate serve` as its own process (so its RSS is its own) in front
of a scriptable raw-HTTP backend in this process, on 127.0.0.1, and prints one JSON line
of figures. Run it twice with different code to compare, e.g. the tree before a change
(``git archive <rev> | tar -x -C /tmp/before``, its own script measuring its own code)
and after:

    PYTHONPATH=/tmp/before/src .venv/bin/python /tmp/before/benchmarks/gateway_hostile.py all
    .venv/bin/python benchmarks/gateway_hostile.py all

Every probe is bounded in time and size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from sluicegate.testbed import percentile

from ._hostile_harness import BODY, CHAT, Backend, Pinger, backend, gateway, post, raw, rss_mib

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["main"]


async def probe_smuggle() -> dict[str, Any]:
    """Item 1: 64 near-miss paths at once against an engine capped at 8."""
    b = Backend()
    b.hold = 1.0
    paths = ["/v1/chat/completions%0a", "/v1/./chat/completions", "/v1/chat/completions/",
             "/v1/%2e%2e/sim/config"] * 16  # fmt: skip
    async with backend(b) as url, gateway(url) as (gw, _):
        statuses = await asyncio.gather(*(raw(gw, post(p)) for p in paths))
    return {
        "probe": "smuggle",
        "sent": len(paths),
        "reached_backend": len(b.paths),
        "backend_max_concurrent": b.max_active,
        "cap": 8,
        "statuses": sorted(set(statuses)),
    }


async def probe_header(size: int) -> dict[str, Any]:
    """Item 2: one request with a `size`-byte header; a good client polls meanwhile."""
    b = Backend()
    async with backend(b) as url, gateway(url) as (gw, pid):
        await asyncio.sleep(0.5)
        before = rss_mib(pid)
        data = post(CHAT, extra=b"x-big: " + b"a" * size + b"\r\n")
        with Pinger(gw) as ping:
            await asyncio.sleep(0.2)
            began = time.perf_counter()
            status = await raw(gw, data, 60)
            took = time.perf_counter() - began
            await asyncio.sleep(0.5)
        hwm = rss_mib(pid, "VmHWM")
    return {
        "probe": "header",
        "header_bytes": size,
        "status": status,
        "request_s": round(took, 2),
        "good_client_max_gap_s": round(ping.max_gap, 3),
        "good_client_failed": ping.failed,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(hwm, 1),
    }


async def probe_slowloris(n: int, seconds: float) -> dict[str, Any]:
    """Item 3: `n` silent/trickling connections at a gateway with 1,024 descriptors;
    a good client sends requests meanwhile."""
    b = Backend()
    async with backend(b) as url, gateway(url, fds=1024) as (gw, _):
        host, port = gw.removeprefix("http://").rsplit(":", 1)
        conns: list[asyncio.StreamWriter] = []
        readers: list[asyncio.StreamReader] = []
        opened = 0
        for i in range(n):
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
            except (OSError, TimeoutError):
                continue
            opened += 1
            if i % 2:
                w.write(b"POST /v1/chat/completions HTTP/1.1\r\n")  # trickle: a head begun
            conns.append(w)
            readers.append(r)
        good_ok = good_fail = 0
        latencies: list[float] = []
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            t = time.perf_counter()
            status = await raw(gw, post(CHAT), wait_s=5)
            latencies.append(time.perf_counter() - t)
            if status == 200:
                good_ok += 1
            else:
                good_fail += 1
            for w in conns[1::2]:
                if not w.is_closing():
                    w.write(b"x")  # keep trickling
            await asyncio.sleep(0.2)
        held = sum(await asyncio.gather(*(_still_open(r) for r in readers)))
        for w in conns:
            w.close()
    latencies.sort()
    return {
        "probe": "slowloris",
        "slow_connections": n,
        "opened": opened,
        "seconds": seconds,
        "good_ok": good_ok,
        "good_failed": good_fail,
        "good_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "good_max_ms": round(latencies[-1] * 1000, 1),
        "slow_still_open_at_end": held,
    }


async def _still_open(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway still holds this connection (no EOF from it yet)."""
    try:
        await asyncio.wait_for(reader.read(), 0.5)
    except TimeoutError:
        return True
    except OSError:
        return False
    return False


async def probe_malformed() -> dict[str, Any]:
    """Item 5: an invalid chunk-size line mid-stream (read_timeout 2 s)."""
    event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        writer.write(head + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.2)  # mid-stream: the first event is relayed on its own
        writer.write(b"zz-not-a-size\r\nxx\r\n")
        await reader.read()  # until the gateway drops the connection

    b = Backend(script)
    async with (
        backend(b) as url,
        gateway(url, server={"read_timeout": 2}) as (gw, _),
        aiohttp.ClientSession() as s,
    ):
        body = json.dumps({"model": "m", "messages": [], "stream": True})
        began = time.perf_counter()
        ended = "hung (probe gave up at 30 s)"
        tail = b""
        try:
            async with s.post(gw + CHAT, data=body) as r:
                data = await asyncio.wait_for(r.read(), 30)
                ended, tail = "ended cleanly", data[-120:]
        except TimeoutError:
            pass
        except aiohttp.ClientPayloadError:
            ended = "cut (connection closed)"
        took = time.perf_counter() - began
        async with s.get(gw + "/debug/flowcontrol") as r:
            in_flight = (await r.json())["pools"]["default"]["in_flight"]
    return {
        "probe": "malformed_stream",
        "client_stream": ended,
        "after_s": round(took, 2),
        "last_bytes": tail.decode(errors="replace"),
        "in_flight_after": in_flight,
    }


async def probe_big_answer(size: int) -> dict[str, Any]:
    """Item 6: one non-streamed answer of `size` bytes (content-length)."""
    chunk = b"a" * (1 << 20)

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % size)  # fmt: skip
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            writer.write(part)
            await writer.drain()
            sent += len(part)

    b = Backend(script)
    async with backend(b) as url, gateway(url) as (gw, pid):
        await asyncio.sleep(0.5)
        before = rss_mib(pid)
        async with aiohttp.ClientSession() as s, s.post(gw + CHAT, data=BODY) as r:
            got = 0
            async for part in r.content.iter_any():
                got += len(part)
        hwm = rss_mib(pid, "VmHWM")
    return {
        "probe": "big_answer",
        "answer_bytes": size,
        "received": got,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(hwm, 1),
    }


async def probe_big_bodies(n: int, size: int) -> dict[str, Any]:
    """Item 6: `n` concurrent request bodies of `size` bytes; the backend holds each 2 s."""
    b = Backend()
    b.hold = 2.0
    body = b'{"model": "m", "messages": [], "pad": "' + b"a" * (size - 50) + b'"}'
    server = {"max_body_bytes": size + 1024}
    async with backend(b) as url, gateway(url, server=server) as (gw, pid):
        await asyncio.sleep(0.5)
        before = rss_mib(pid)
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.post(gw + CHAT, data=body) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(n)))
        hwm = rss_mib(pid, "VmHWM")
    counts = {str(k): statuses.count(k) for k in sorted(set(statuses))}
    return {
        "probe": "big_bodies",
        "bodies": n,
        "body_bytes": size,
        "statuses": counts,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(hwm, 1),
    }


async def probe_visibility() -> dict[str, Any]:
    """Item 8, 10, 15: dead and silent backends in /metrics; /health; lower-case bearer."""

    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # answers nothing, until the gateway gives up

    b = Backend(silent)
    out: dict[str, Any] = {"probe": "visibility"}
    async with (
        backend(b) as url,
        gateway(url, server={"read_timeout": 0.5, "auth_token": "t"}) as (gw, _),
        aiohttp.ClientSession() as s,
    ):
        async with s.post(gw + CHAT, data=BODY) as r:
            out["silent_backend"] = [r.status, (await r.json())["error"]]
        async with s.get(gw + "/health") as r:
            out["GET /health"] = r.status
        async with s.get(gw + "/metrics", headers={"authorization": "bearer t"}) as r:
            out["lower-case bearer"] = r.status
        async with s.get(gw + "/metrics", headers={"authorization": "Bearer t"}) as r:
            text = await r.text()
        out["upstream_errors_lines"] = [
            line for line in text.splitlines() if "upstream_errors_total{" in line
        ]
        out["requests_total_lines"] = [
            line for line in text.splitlines() if "_requests_total{" in line
        ]
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def probe_cpu(requests: int = 4000, concurrency: int = 16) -> dict[str, Any]:
    """Per-request cost: the gateway's CPU time per non-streamed request (from /proc,
    so only the gateway process counts; less noisy than latency on a shared machine)."""
    b = Backend()
    sat = {"type": "concurrency", "max_in_flight": 1000}
    async with (
        backend(b) as url,
        gateway(url, saturation=sat) as (gw, pid),
        aiohttp.ClientSession() as s,
    ):

        async def worker(n: int) -> None:
            for _ in range(n):
                async with s.post(gw + CHAT, data=BODY) as r:
                    await r.read()

        await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm-up
        before = cpu_s(pid)
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        used = cpu_s(pid) - before
    return {"probe": "cpu", "requests": requests, "gateway_cpu_us_per_request":
            round(used / requests * 1e6, 1)}  # fmt: skip


async def _main(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="gateway_hostile.py", description=__doc__.split("\n\n")[0]
    )
    names = ["smuggle", "header", "slowloris", "malformed", "big_answer", "big_bodies"]
    parser.add_argument("probe", choices=["all", *names, "visibility", "cpu"])
    parser.add_argument("--header-mib", type=int, default=128)
    parser.add_argument("--slow", type=int, default=1100)
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    parser.add_argument("--answer-mib", type=int, default=300)
    parser.add_argument("--cpu-requests", type=int, default=4000)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    probes: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "smuggle": probe_smuggle,
        "header": lambda: probe_header(args.header_mib << 20),
        "slowloris": lambda: probe_slowloris(args.slow, args.slow_seconds),
        "malformed": probe_malformed,
        "big_answer": lambda: probe_big_answer(args.answer_mib << 20),
        "big_bodies": lambda: probe_big_bodies(32, 16 << 20),
        "visibility": probe_visibility,
        "cpu": lambda: probe_cpu(args.cpu_requests),
    }
    chosen = list(probes) if args.probe == "all" else [args.probe]
    print(json.dumps({"code": os.environ.get("PYTHONPATH", "worktree")}), flush=True)
    for name in chosen:
        print(json.dumps(await probes[name]()), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/gateway_hostile.py` (`argv`: its arguments)."""
    asyncio.run(_main(argv))
