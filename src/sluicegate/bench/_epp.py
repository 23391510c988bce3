"""Part ``epp``: the endpoint picker's cost per request, beside the HTTP gateway's.

The picker (`sluicegate epp`, a concurrency pool whose limit is never reached, so
nothing queues) runs alone on the gateway core; this process plays Envoy with the
`EnvoyEmulator` on the load core. A lifecycle is a whole request as Envoy walks it:
headers, body, the pick, response headers, a response body with ``usage``, end.

* Decision latency, concurrency 1: from the end of the request body to the pick sent,
  as the picker measures it (its ``decision_ms`` record), and as the emulator sees it
  (one gRPC round trip more).
* Lifecycles per second on one core: closed loop at concurrency 64; the picker's CPU
  time (``/proc/<pid>``) over the phase gives lifecycles per CPU-second, which is the
  rate one fully used core sustains whether or not the load generator kept it busy.

In the same run, the HTTP gateway (`sluicegate serve`, also alone on the gateway core)
relays to a raw-protocol upstream: its added latency and its requests per CPU-second
are the baseline, measured the same way. A do-nothing ext_proc server (one empty reply
per message, the same four message pairs per stream) gives gRPC's own floor: the most
lifecycles per CPU-second any picker built on grpcio could reach here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import orjson

from ._figures import Figure, PartResult, Target
from ._overhead import OverheadOptions, _can_pin, _pinned, cpu_seconds, free_port, running
from ._stats import percentile
from ._upstream import BODY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ["EppOptions", "run_epp"]

_CHAT: Final = "/v1/chat/completions"
_RESPONSE: Final = (b'{"id":"x","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4}}',)
_FLOOR: Final = "from sluicegate.bench._epp import floor_main; floor_main()"
_CONFIG: Final = """\
server: {host: 127.0.0.1}
pools:
  - name: default
    models: ["*"]
    backends: ["http://127.0.0.2:8000", "http://127.0.0.3:8000"]
    saturation: {type: concurrency, max_in_flight: 1000000}
"""


@final
@dataclass(frozen=True, slots=True)
class EppOptions:
    """What the part runs (``quick`` shortens every phase)."""

    latency_requests: int = 3000
    throughput_s: float = 6.0
    warmup: int = 300
    concurrency: int = 64
    gateway_core: int = 0
    load_core: int = 1
    quick: bool = False


@final
@dataclass(frozen=True, slots=True)
class _Picker:
    target: str
    metrics: str
    pid: int
    pinned: bool


def floor_main() -> None:
    """A do-nothing ext_proc server: one empty reply per message (gRPC's own cost)."""
    import grpc
    import uvloop
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    reply = ext.ProcessingResponse(request_headers=ext.HeadersResponse())

    class Floor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        async def Process(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            async for _ in requests:
                yield reply

    async def main() -> None:
        server = grpc.aio.server()
        ext_grpc.add_ExternalProcessorServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
        await server.start()
        print("listening", flush=True)  # noqa: T201
        await server.wait_for_termination()

    uvloop.run(main())


@contextlib.contextmanager
def _process(args: list[str], options: EppOptions) -> Iterator[tuple[int, bool]]:
    """Start `args` pinned to the gateway core (this process to the load core)."""
    pin = _can_pin(OverheadOptions(gateway_core=options.gateway_core, load_core=options.load_core))
    saved = os.sched_getaffinity(0) if pin else None
    proc = subprocess.Popen(_pinned(options.gateway_core, pin, args), stdout=subprocess.PIPE)
    try:
        if pin:
            os.sched_setaffinity(0, {options.load_core})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"{' '.join(args[:5])} did not start: {line!r}")
        yield proc.pid, pin
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def _measure_floor(target: str, pid: int, options: EppOptions) -> dict[str, float]:
    """Closed loop of streams of 4 message pairs (a lifecycle's count) on the floor server."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    message = ext.ProcessingRequest(request_body=ext.HttpBody(body=BODY, end_of_stream=True))
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ext_grpc.ExternalProcessorStub(channel)

        async def stream() -> None:
            call = stub.Process()
            for _ in range(4):
                await call.write(message)
                await call.read()
            await call.done_writing()
            await call.read()

        for _ in range(options.warmup):
            await stream()
        stop_at = time.perf_counter() + options.throughput_s

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stream()
                done += 1

        cpu = cpu_seconds(pid)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu
    return {
        "grpc floor streams/s": done / wall,
        "grpc floor streams per cpu-s": done / cpu if cpu > 0 else 0.0,
        "grpc floor cpu share": cpu / wall,
    }


@contextlib.contextmanager
def _picker(options: EppOptions) -> Iterator[_Picker]:
    grpc_port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "epp.yaml"
        config.write_text(_CONFIG, encoding="utf-8")
        args = [
            sys.executable, "-m", "sluicegate", "epp", "--config", str(config),
            "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
            "--log-level", "warning",
        ]  # fmt: skip
        with _process(args, options) as (pid, pinned):
            yield _Picker(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}", pid, pinned)


async def _decision_ms(metrics: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(metrics + "/debug/flowcontrol") as r:
        doc = orjson.loads(await r.read())
    out: dict[str, float] = doc["decision_ms"]
    return out


async def _measure_picker(picker: _Picker, options: EppOptions) -> dict[str, float]:
    from sluicegate.epp import EnvoyEmulator

    results: dict[str, float] = {}
    async with EnvoyEmulator(picker.target) as envoy:
        for _ in range(options.warmup):  # channel, caches, the controller's bands
            await envoy.lifecycle(BODY, response=_RESPONSE)
        seen: list[float] = []
        for _ in range(options.latency_requests):
            decision = await envoy.lifecycle(BODY, response=_RESPONSE)
            seen.append(decision.latency)
        server = await _decision_ms(picker.metrics)
        results["epp decision p50 ms"] = server["p50"]
        results["epp decision p99 ms"] = server["p99"]
        results["emulator pick p50 ms"] = percentile(seen, 50) * 1e3
        results["emulator pick p99 ms"] = percentile(seen, 99) * 1e3
        done = 0
        stop_at = time.perf_counter() + options.throughput_s

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await envoy.lifecycle(BODY, response=_RESPONSE)
                done += 1

        cpu = cpu_seconds(picker.pid)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
        wall = time.perf_counter() - began
        cpu = cpu_seconds(picker.pid) - cpu
    results["epp lifecycles/s"] = done / wall
    results["epp lifecycles per cpu-s"] = done / cpu if cpu > 0 else 0.0
    results["epp cpu share"] = cpu / wall
    return results


async def _measure_gateway(
    direct: str, gateway: str, pid: int, options: EppOptions
) -> dict[str, float]:
    results: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def latencies(url: str, n: int) -> list[float]:
            out = []
            for _ in range(n):
                began = time.perf_counter()
                async with session.post(url + _CHAT, data=BODY) as r:
                    await r.read()
                out.append(time.perf_counter() - began)
            return out

        await latencies(direct, options.warmup)
        await latencies(gateway, options.warmup)
        d = await latencies(direct, options.latency_requests)
        g = await latencies(gateway, options.latency_requests)
        for q in (50, 99):
            results[f"gateway added p{q} ms"] = (percentile(g, q) - percentile(d, q)) * 1e3
        done = 0
        stop_at = time.perf_counter() + options.throughput_s

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                async with session.post(gateway + _CHAT, data=BODY) as r:
                    await r.read()
                done += 1

        cpu = cpu_seconds(pid)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
        wall = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu
    results["gateway req/s"] = done / wall
    results["gateway req per cpu-s"] = done / cpu if cpu > 0 else 0.0
    results["gateway cpu share"] = cpu / wall
    return results


def _figures(r: dict[str, float], pinned: bool) -> list[Figure]:
    core = " (picker pinned to one core)" if pinned else ""
    return [
        Figure(
            "epp: lifecycles per CPU-second (= per core)" + core,
            r["epp lifecycles per cpu-s"],
            "req/s",
            r["gateway req per cpu-s"],
            "HTTP gateway requests per CPU-second, same run",
            Target(">=", 2000, ">= 2,000 per core"),
            note=f"wall rate {r['epp lifecycles/s']:,.0f}/s at {r['epp cpu share']:.0%} of a core",
        ),
        Figure(
            "epp: lifecycles per CPU-second, beside gRPC's own floor",
            r["epp lifecycles per cpu-s"],
            "req/s",
            r["grpc floor streams per cpu-s"],
            "do-nothing ext_proc server, same 4 message pairs per stream, same run",
            note="the floor is grpcio's cost alone: the ceiling of any grpcio picker",
        ),
        Figure(
            "epp: decision latency p50 (body received -> pick sent)",
            r["epp decision p50 ms"],
            "ms",
            r["gateway added p50 ms"],
            "HTTP gateway added latency p50, same run",
        ),
        Figure(
            "epp: decision latency p99, unsaturated",
            r["epp decision p99 ms"],
            "ms",
            r["gateway added p99 ms"],
            "HTTP gateway added latency p99, same run",
            Target("<=", 2.0, "<= 2 ms"),
        ),
    ]


def run_epp(options: EppOptions, *, command: str) -> PartResult:
    """Measure the picker, then the HTTP gateway, and build the section.

    Raises:
        RuntimeError: a process did not start.
    """
    began = time.monotonic()
    if options.quick:
        options = EppOptions(
            latency_requests=300,
            throughput_s=1.5,
            concurrency=options.concurrency,
            gateway_core=options.gateway_core,
            load_core=options.load_core,
            quick=True,
        )
    with _picker(options) as picker:
        results = asyncio.run(_measure_picker(picker, options))
    port = free_port()
    # Not `-m`: runpy warns when it runs a module the package already imported.
    floor = [sys.executable, "-c", _FLOOR, str(port)]
    with _process(floor, options) as (pid, _):
        results.update(asyncio.run(_measure_floor(f"127.0.0.1:{port}", pid, options)))
    http = OverheadOptions(gateway_core=options.gateway_core, load_core=options.load_core)
    with running(http) as ep:
        results.update(
            asyncio.run(_measure_gateway(ep.direct, ep.gateway, ep.gateway_pid, options))
        )
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:,.3f} |" for name, value in results.items()]
    return PartResult(
        part="epp",
        title="Endpoint picker (ext_proc) beside the HTTP gateway",
        command=command,
        method=(
            f"`sluicegate epp` (concurrency pool, limit never reached) driven by the Envoy "
            f"emulator: {options.latency_requests} sequential lifecycles for decision latency, "
            f"then {options.throughput_s:g} s closed loop at concurrency {options.concurrency}; "
            f"the same phases through `sluicegate serve` and a raw upstream for the baseline. "
            + (
                "Picker and gateway pinned to one core, load to the other."
                if picker.pinned
                else "Not pinned."
            )
        ),
        figures=_figures(results, picker.pinned),
        tables=["\n".join(lines)],
        notes=[
            "No Envoy binary runs here: the emulator speaks the ext_proc protocol as Envoy "
            "does, so the picker's side is real and Envoy's relay cost is not included.",
        ],
        seconds=time.monotonic() - began,
        raw={"results": results, "pinned": picker.pinned},
    )
