"""Probes behind issue 12's figures: dead backends, big operations pages, a wrong URL.

Each probe runs a gateway (and, where needed, a simulator) in this process on
127.0.0.1 and prints one line of figures, so a before/after pair comes from the same
command on two commits.

    .venv/bin/python benchmarks/gateway_hardening.py dead-backend [--requests 4000]
    .venv/bin/python benchmarks/gateway_hardening.py ops [--ids 100000]
    .venv/bin/python benchmarks/gateway_hardening.py wrong-url

* ``dead-backend``: a ``concurrency`` pool of one simulator and one port nobody listens
  on; share of 502 answers among N requests sent 64 at a time.
* ``ops``: N fairness ids with a queued request each (the pool is held saturated); time
  and size of ``/metrics`` and ``/debug/flowcontrol``.
* ``wrong-url``: a pool whose only backend refuses connections (both saturation types);
  seconds to the answer of a request sent after the gateway noticed, and its code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

import sluicegate as sg
from sluicegate.gateway import parse_config, serve_in_background
from sluicegate.sim import SimConfig
from sluicegate.sim import serve_in_background as serve_sim

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

BODY = orjson.dumps(
    {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(backends: list[str], saturation: dict[str, Any], **top: Any) -> Any:
    pool = {"name": "default", "models": ["*"], "backends": backends, "saturation": saturation}
    return parse_config(
        {"server": {"host": "127.0.0.1", "port": 0}, "pools": [pool], **top}, source="probe"
    )


async def dead_backend(requests: int) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    sim = SimConfig(max_num_seqs=64, time_to_first_token=1.0, inter_token_latency=1.0)
    async with serve_sim(sim) as live:
        config = _config([live, dead], {"type": "concurrency", "max_in_flight": 32})
        async with (
            serve_in_background(config) as gw,
            aiohttp.ClientSession(base_url=str(gw.url)) as client,
        ):
            statuses: Counter[int] = Counter()
            gate = asyncio.Semaphore(64)

            async def one() -> None:
                async with gate, client.post("/v1/chat/completions", data=BODY) as r:
                    await r.read()
                    statuses[r.status] += 1

            began = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(requests)))
            elapsed = time.perf_counter() - began
            async with client.get("/readyz") as r:
                ready = r.status
    share = statuses[502] / requests
    print(
        f"dead-backend: {requests} requests in {elapsed:.1f} s, 502 share {share:.1%}, "
        f"statuses {dict(statuses)}, /readyz {ready}"
    )


async def ops(ids: int) -> None:
    live = f"http://127.0.0.1:{_free_port()}"  # never contacted: the pool stays saturated
    config = _config(
        [live],
        {"type": "concurrency", "max_in_flight": 1},
        flow_control={"default_ttl": None, "default_band": {"max_requests": None}},
    )
    async with (
        serve_in_background(config) as gw,
        aiohttp.ClientSession(base_url=str(gw.url)) as client,
    ):
        ctl = gw.pools["default"].controller
        hold = await ctl.enqueue_and_wait(sg.FlowKey("holder", 0))
        waiters = [
            asyncio.ensure_future(ctl.enqueue_and_wait(sg.FlowKey(f"tenant-{i}", 0), ttl=math.inf))
            for i in range(ids)
        ]
        await asyncio.sleep(0)  # each waiter runs up to its queue once
        assert ctl.statistics().queued_requests == ids
        for path in ("/metrics", "/debug/flowcontrol"):
            times, size = [], 0
            for _ in range(3):
                began = time.perf_counter()
                async with client.get(path) as r:
                    size = len(await r.read())
                times.append(time.perf_counter() - began)
            print(f"ops: {ids} ids {path}: {min(times):.3f} s (best of 3), {size / 1e6:.2f} MB")
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        hold.release()


async def wrong_url() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    for saturation in (
        {"type": "concurrency", "max_in_flight": 8},
        {"type": "utilization", "scrape_interval": 0.05},
    ):
        config = _config([dead], saturation)
        async with (
            serve_in_background(config) as gw,
            aiohttp.ClientSession(base_url=str(gw.url)) as client,
        ):
            answers = []
            for _ in range(3):  # the first may be what tells the gateway
                began = time.perf_counter()
                async with client.post("/v1/chat/completions", data=BODY) as r:
                    doc = await r.json()
                    answers.append(
                        f"{r.status} {doc['error']['code']} {time.perf_counter() - began:.2f} s"
                    )
        print(f"wrong-url ({saturation['type']}): " + "; ".join(answers))


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/gateway_hardening.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(
        prog="gateway_hardening.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("probe", choices=["dead-backend", "ops", "wrong-url"])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--ids", type=int, default=100_000)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.probe == "dead-backend":
            asyncio.run(dead_backend(args.requests))
        elif args.probe == "ops":
            asyncio.run(ops(args.ids))
        else:
            asyncio.run(wrong_url())
