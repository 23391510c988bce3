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

  The load is `LeanEnvoy` (Envoy's message sequence from pre-encoded HTTP/2 bytes),
  which keeps the picker's core busy; the grpcio `EnvoyEmulator` cannot (it costs its
  core as much as the picker costs its own), and its figure is kept beside for reference.

In the same run, the HTTP gateway (`sluicegate serve`, also alone on the gateway core)
relays to a raw-protocol upstream: its added latency and its requests per CPU-second
are the baseline, measured the same way. Two do-nothing ext_proc servers (one empty
reply per message, the same four message pairs per lifecycle, see `_epp_floors`) give
the floors: grpcio's (the most any picker built on grpc.aio could reach here) and the
picker's own h2 server's.
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
from typing import TYPE_CHECKING, Final, final

import aiohttp
import orjson

from sluicegate.testbed import percentile

from ._epp_floors import measure_lean
from ._epp_load import RESPONSE as _RESPONSE
from ._figures import Figure, PartResult, Target
from ._overhead import OverheadOptions, _can_pin, _pinned, cpu_seconds, free_port, running
from ._upstream import BODY

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["EppOptions", "run_epp"]

_CHAT: Final = "/v1/chat/completions"
_FLOOR: Final = "from sluicegate.bench._epp_floors import floor_main; floor_main()"
#: The floors measured in this part (see `_epp_floors` for the whole matrix).
_FLOORS: Final = ("aio-uvloop", "sluicegate-h2")
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
    results["emulator-driven lifecycles per cpu-s"] = done / cpu if cpu > 0 else 0.0
    results["emulator-driven cpu share"] = cpu / wall
    port = int(picker.target.rsplit(":", 1)[1])
    lean = await measure_lean(port, picker.pid, options.throughput_s, options.concurrency)
    results["epp lifecycles/s"] = lean["lifecycles/s"]
    results["epp lifecycles per cpu-s"] = lean["per cpu-s"]
    results["epp cpu share"] = lean["cpu share"]
    results["epp lean errors"] = lean["errors"]
    return results


async def _measure_leans(options: EppOptions) -> dict[str, float]:
    results: dict[str, float] = {}
    for name in _FLOORS:
        port = free_port()
        # Not `-m`: runpy warns when it runs a module the package already imported.
        with _process([sys.executable, "-c", _FLOOR, name, str(port)], options) as (pid, _):
            floor = await measure_lean(port, pid, options.throughput_s, options.concurrency)
        results[f"floor {name} per cpu-s"] = floor["per cpu-s"]
        results[f"floor {name} cpu share"] = floor["cpu share"]
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
            note=f"lean Envoy load: {r['epp lifecycles/s']:,.0f}/s at {r['epp cpu share']:.0%} "
            f"of a core; driven by the grpcio emulator instead: "
            f"{r['emulator-driven lifecycles per cpu-s']:,.0f} per CPU-s at "
            f"{r['emulator-driven cpu share']:.0%}",
        ),
        Figure(
            "epp: lifecycles per CPU-second, beside grpcio's floor",
            r["epp lifecycles per cpu-s"],
            "req/s",
            r["floor aio-uvloop per cpu-s"],
            "do-nothing grpc.aio ext_proc server, 4 message pairs per lifecycle, same run",
            note="the most any picker on grpc.aio could reach (before its own work)",
        ),
        Figure(
            "epp: lifecycles per CPU-second, beside its own server's floor",
            r["epp lifecycles per cpu-s"],
            "req/s",
            r["floor sluicegate-h2 per cpu-s"],
            "do-nothing ext_proc server on the picker's asyncio+h2 server, same run",
            note="the gap is the picker's own work: parsing, flow control, replies, accounting",
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
    results.update(asyncio.run(_measure_leans(options)))
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
            f"then {options.throughput_s:g} s closed loop at concurrency {options.concurrency}, "
            f"with the emulator and then with the lean pre-encoded HTTP/2 load (the figure); "
            f"the same lean load on two do-nothing servers (grpc.aio, the picker's h2 server); "
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
