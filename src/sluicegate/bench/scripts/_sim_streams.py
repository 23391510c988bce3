"""Can one simulator process on one core keep N streams at 20 tokens/s on schedule?

For each N, this starts `sluicegate sim` pinned to core 0 and a load generator (this script
with `--loadgen`) pinned to core 1. The generator opens N streamed completions with
aiohttp, ramped over one inter-token latency, each asking for `--tokens` tokens at 50 ms
per token, and records when every SSE event arrives. It reports, over the steady window
(all streams open), the achieved events/s against the target N x 20, the client-side
inter-token latency p50/p99, how late tokens are against their own schedule
(arrival - (anchor + k x 50 ms), the anchor being the stream's earliest token shifted
back to k = 0), and the CPU use of both processes.

    .venv/bin/python benchmarks/sim_streams.py --streams 250,500,1000 --tokens 200

Every run is bounded: the generator gives up after `--tokens x 50 ms + 30 s`. The machine
is shared and noisy; compare figures from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from sluicegate.testbed import percentile

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

ITL_MS = 50.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds `pid` has spent runnable but waiting for a CPU (other tenants' load)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


async def one_stream(
    http: aiohttp.ClientSession, url: str, tokens: int, delay: float
) -> list[float]:
    """Open one stream after `delay` seconds; return the arrival time of each token event."""
    await asyncio.sleep(delay)
    body = {"model": "sim-model", "prompt": "benchmark", "max_tokens": tokens, "stream": True}
    arrivals: list[float] = []
    async with http.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_any():
            now = time.monotonic()
            arrivals.extend([now] * data.count(b"\n\n"))
    return arrivals[:tokens]  # the last event is [DONE]


async def loadgen(url: str, streams: int, tokens: int, sim_pid: int) -> dict[str, Any]:
    """Run N streams against `url`; measure the steady window."""
    itl = ITL_MS / 1000
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=tokens * itl + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        ramp = [i * itl / streams for i in range(streams)]
        start = time.monotonic()
        window_start = start + itl + 1.0  # every stream has its first token by then
        window_end = start + tokens * itl - 1.0  # no stream has finished yet
        probe = asyncio.create_task(cpu_probe(sim_pid, window_start, window_end))
        own = asyncio.create_task(cpu_probe(os.getpid(), window_start, window_end))
        lag_before = asyncio.create_task(lag_buckets(http, url, window_start))
        lag_after = asyncio.create_task(lag_buckets(http, url, window_end))
        results = await asyncio.gather(*(one_stream(http, url, tokens, d) for d in ramp))
        (sim_cpu, sim_wait), (gen_cpu, _) = await probe, await own
        sim_lag = lag_p99_ms(await lag_before, await lag_after)
    gaps, lateness, in_window = [], [], 0
    for arrivals in results:
        # A stream's schedule is anchor + k x ITL; the anchor is its earliest token when
        # shifted back to k = 0, so lateness is >= 0 and measures drift and jitter.
        anchor = min(at - k * itl for k, at in enumerate(arrivals))
        for k, at in enumerate(arrivals):
            if window_start <= at < window_end:
                in_window += 1
                lateness.append(at - (anchor + k * itl))
                if k:
                    gaps.append(at - arrivals[k - 1])
    seconds = window_end - window_start
    rate = in_window / seconds
    return {
        "streams": streams,
        "target_events_s": streams * 1000 / ITL_MS,
        "events_s": rate,
        "itl_p50_ms": statistics.median(gaps) * 1000,
        "itl_p99_ms": percentile(gaps, 99) * 1000,
        "late_p99_ms": percentile(lateness, 99) * 1000,
        "late_max_ms": max(lateness) * 1000,
        "sim_cpu": sim_cpu / seconds,
        "sim_us_per_event": sim_cpu / (rate * seconds) * 1e6,
        "gen_cpu": gen_cpu / seconds,
        "sim_wait": sim_wait / seconds,
        "sim_lag_p99_ms": sim_lag,
        "complete": all(len(a) == tokens for a in results),
    }


async def lag_buckets(http: aiohttp.ClientSession, url: str, at: float) -> dict[float, float]:
    """At monotonic time `at`, scrape the simulator's schedule-lag histogram {le: count}."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    prefix = 'sluicegate_sim_schedule_lag_seconds_bucket{le="'
    return {
        float(line[len(prefix) :].split('"')[0]): float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def lag_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound (ms) of the bucket holding the 99th percentile of the window."""
    total = after[float("inf")] - before[float("inf")]
    for le in sorted(after):
        if after[le] - before[le] >= 0.99 * total:
            return le * 1000
    return float("inf")


async def cpu_probe(pid: int, start: float, end: float) -> tuple[float, float]:
    """CPU and run-queue wait seconds of `pid` between monotonic `start` and `end`."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    before = cpu_seconds(pid), runqueue_wait_seconds(pid)
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return cpu_seconds(pid) - before[0], runqueue_wait_seconds(pid) - before[1]


def run_one(streams: int, tokens: int, cores: tuple[int, int]) -> dict[str, Any]:
    """Start a pinned simulator and a pinned load generator; return the generator's report."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "sluicegate", "sim", "--port", "0",
         "--max-num-seqs", str(streams), "--kv-cache-size", str(streams * (tokens + 16)),
         "--time-to-first-token", "10", "--prefill-time-per-token", "0",
         "--inter-token-latency", str(ITL_MS), "--time-factor-under-load", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        os.sched_setaffinity(sim.pid, {cores[0]})
        assert sim.stdout is not None
        url = sim.stdout.readline().split()[-1]
        gen = subprocess.run(
            [sys.executable, "-m", "sluicegate.bench.scripts", "sim_streams", "--loadgen",
             "--url", url, "--streams", str(streams),
             "--tokens", str(tokens), "--sim-pid", str(sim.pid)],
            capture_output=True, text=True, timeout=tokens * ITL_MS / 1000 + 60, check=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {cores[1]}),
        )  # fmt: skip
        result: dict[str, Any] = json.loads(gen.stdout)
        return result
    finally:
        sim.terminate()
        sim.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments; run the matrix or, with --loadgen, one load generator."""
    parser = argparse.ArgumentParser(prog="sim_streams.py", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="250,500,1000")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sim-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        import uvloop

        report = uvloop.run(loadgen(args.url, int(args.streams), args.tokens, args.sim_pid))
        print(json.dumps(report))
        return
    cpus = sorted(os.sched_getaffinity(0))
    cores = (cpus[0], cpus[-1])
    print(f"sim on core {cores[0]}, load generator on core {cores[1]}, ITL {ITL_MS:.0f} ms")
    print("| streams | target ev/s | achieved ev/s | ITL p50 ms | ITL p99 ms "
          "| late p99 ms | late max ms | sim lag p99 ms | sim CPU | sim runq wait "
          "| sim us/event | loadgen CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for streams in map(int, args.streams.split(",")):
            r = run_one(streams, args.tokens, cores)
            print(
                f"| {r['streams']} | {r['target_events_s']:.0f} | {r['events_s']:.0f} "
                f"| {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} | {r['late_p99_ms']:.1f} "
                f"| {r['late_max_ms']:.1f} | <= {r['sim_lag_p99_ms']:g} "
                f"| {r['sim_cpu']:.0%} | {r['sim_wait']:.0%} | {r['sim_us_per_event']:.1f} "
                f"| {r['gen_cpu']:.0%} |" + ("" if r["complete"] else " INCOMPLETE"),
                flush=True,
            )
