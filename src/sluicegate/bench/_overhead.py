"""Parts 2 and 3: what the gateway adds on the data path, and what a relayed chunk costs.

Three processes: the minimal upstream (`_upstream`, on the load core), the gateway
(`sluicegate serve`, alone on the gateway core, flow control on with a concurrency limit
far above the load) and this load generator (load core). Direct and through-gateway runs
are interleaved within each round and repeated; the report gives medians over rounds of
per-round differences and ratios. With ``--target URL`` another gateway, configured to
forward to the upstream's port, is measured in the same rounds.

Part 3 reads the gateway's CPU time (user + system, from ``/proc/<pid>/stat``) around a
batch of N concurrent streams and divides by the SSE events the client received; the
upstream's CPU per event written, measured the same way in the same batch, is the
baseline (the cost of producing a chunk with a raw protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import aiohttp

from sluicegate.gateway._client import Client
from sluicegate.testbed import percentile

from ._open_loop import open_loop
from ._stacks import _lean_request
from ._upstream import BODY, STREAM_BODY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "Endpoints",
    "OverheadOptions",
    "cpu_seconds",
    "measure_open_sweep",
    "measure_overhead",
    "measure_streaming",
    "paths",
    "stream_body",
]

_CHAT: Final = "/v1/chat/completions"


@final
@dataclass(frozen=True, slots=True)
class OverheadOptions:
    """What parts 2 and 3 run.

    Attributes:
        rounds: interleaved repetitions.
        latency_requests: sequential requests per path per round (concurrency 1).
        throughput_s: seconds per path per round at concurrency 64.
        streams: part 3's numbers of concurrent streams.
        events: SSE events per stream.
        gap_ms: milliseconds between two events of a stream.
        gateway_core: the core the gateway is pinned to.
        load_core: the core the upstream and the load generator are pinned to.
        target: another gateway's base URL, measured beside ours.
        backend_port: the upstream's port (0: a free one; set it with `target`).
        target_pid: the target's process id, to read its CPU time (else none is shown).
        target_key: a bearer token the target needs (LiteLLM's master key); sent on
            every path alike, so no path pays for a header the others do not.
        short_events: part 3's second stream length: CPU per stream at `events` and at
            this many chunks gives the marginal cost of a chunk and the fixed cost of a
            stream.
        open_loop_s: seconds per path of part 2's open loop (80 % of each gateway's rate).
        upstream: what serves the upstream (`_upstream.SERVERS`): ``raw``, the floor, or
            ``aiohttp``, the minimal aiohttp upstream issue 17's targets are stated against.
    """

    rounds: int = 3
    latency_requests: int = 1000
    throughput_s: float = 4.0
    streams: tuple[int, ...] = (16, 64, 256)
    events: int = 100
    gap_ms: float = 20.0
    gateway_core: int = 0
    load_core: int = 1
    target: str | None = None
    backend_port: int = 0
    target_pid: int | None = None
    target_key: str | None = None
    short_events: int = 4
    open_loop_s: float = 4.0
    upstream: str = "raw"


@final
@dataclass(frozen=True, slots=True)
class Endpoints:
    """Running processes: base URLs, and pids for CPU accounting."""

    direct: str
    gateway: str
    gateway_pid: int
    upstream_pid: int
    target: str | None
    pinned: bool
    target_pid: int | None = None


def free_port() -> int:
    """A port that was free on loopback a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has run so far, summed over its threads.

    From ``/proc/<pid>/task/*/schedstat`` (nanoseconds) where the kernel keeps it; else
    user + system time from ``/proc/<pid>/stat``, whose 10 ms ticks are too coarse for
    short batches.
    """
    total_ns = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                    total_ns += int(f.read().split()[0])
            except FileNotFoundError:
                continue  # a thread that just exited
    except (OSError, ValueError, IndexError):
        total_ns = 0
    if total_ns:
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _process(args: list[str], ready: bytes) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if ready not in line:
            raise RuntimeError(f"{' '.join(args[:6])} did not start: {line!r}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _can_pin(options: OverheadOptions) -> bool:
    if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
        return False
    usable = os.sched_getaffinity(0)
    return (
        options.gateway_core != options.load_core
        and {
            options.gateway_core,
            options.load_core,
        }
        <= usable
    )


def _pinned(core: int, pin: bool, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args] if pin else args


@contextlib.contextmanager
def running(options: OverheadOptions) -> Iterator[Endpoints]:
    """Start the upstream and the gateway (pinned where possible); stop them on exit.

    While inside, this process (the load generator) is pinned to the load core; its
    affinity is restored on exit.
    """
    pin = _can_pin(options)
    up_port, gw_port = options.backend_port or free_port(), free_port()
    # Not `-m sluicegate.bench._upstream`: the package imports that module, and runpy
    # warns when it runs a module already imported.
    upstream = [
        sys.executable, "-c", "from sluicegate.bench._upstream import main; main()",
        "--port", str(up_port),
        "--events", str(options.events), "--gap-ms", str(options.gap_ms),
        "--server", options.upstream,
    ]  # fmt: skip
    gateway = [
        sys.executable, "-m", "sluicegate", "serve", "--backend", f"http://127.0.0.1:{up_port}",
        "--port", str(gw_port), "--max-in-flight", "100000", "--log-level", "warning",
    ]  # fmt: skip
    saved = os.sched_getaffinity(0) if pin else None
    try:
        if pin:
            os.sched_setaffinity(0, {options.load_core})
        with (
            _process(_pinned(options.load_core, pin, upstream), b"ready") as up,
            _process(_pinned(options.gateway_core, pin, gateway), b"listening") as gw,
        ):
            yield Endpoints(
                f"http://127.0.0.1:{up_port}",
                f"http://127.0.0.1:{gw_port}",
                gw.pid,
                up.pid,
                options.target.rstrip("/") if options.target else None,
                pin,
                options.target_pid,
            )
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)


@final
class _Load:
    """Part 2's load generator at concurrency 1 and 64: the gateway's own HTTP/1.1
    client (`gateway._client`). The open loop has its own, leaner sender (`_open_loop`).

    It shares the load core with the upstream, and aiohttp's client (~3x its CPU per
    request) made it the bottleneck there: the closed loop's req/s measured the
    generator. Every path gets the same client.
    """

    def __init__(self, headers: dict[str, str]) -> None:
        self._client = Client(read_timeout=30.0)
        self._headers = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in headers.items()
        ]

    async def post(self, url: str) -> None:
        """POST the chat body to `url` (``base/v1/...``) and read the whole answer."""
        base, _, path = url.partition("/v1/")
        path_bytes = b"/v1/" + path.encode()
        await _lean_request(self._client, base, b"POST", path_bytes, self._headers, BODY)

    async def close(self) -> None:
        await self._client.close()


async def _latencies(session: _Load, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        await session.post(url)
        out.append(time.perf_counter() - began)
    return out


async def _throughput(session: _Load, url: str, seconds: float) -> int:
    """Closed loop: 64 workers, each sending its next request when the last one answered.
    Returns the requests answered."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await session.post(url)
            done += 1

    await asyncio.gather(*(worker() for _ in range(64)))
    return done


def _cpu_pids(ep: Endpoints) -> dict[str, int | None]:
    """Whose CPU time is a path's cost: the upstream's for direct, else the gateway's."""
    return {"direct": ep.upstream_pid, "sluicegate": ep.gateway_pid, "target": ep.target_pid}


async def _closed_round(
    session: _Load, ep: Endpoints, seconds: float, results: dict[str, list[float]]
) -> None:
    """Closed loop at 64 on every path: req/s and CPU us per request of its server."""
    pids = _cpu_pids(ep)
    for name, base in paths(ep):
        pid = pids[name]
        cpu = cpu_seconds(pid) if pid is not None else 0.0
        began = time.perf_counter()
        done = await _throughput(session, base + _CHAT, seconds)
        elapsed = time.perf_counter() - began
        results.setdefault(f"{name} req/s @64", []).append(done / elapsed)
        if pid is not None and done:
            used = cpu_seconds(pid) - cpu
            results.setdefault(f"{name} cpu us/req @64", []).append(used / done * 1e6)


async def _open_round(
    ep: Endpoints, seconds: float, headers: dict[str, str], results: dict[str, list[float]]
) -> None:
    """Open loop at 80 % of each gateway's own closed-loop rate, from the lean open-loop
    sender (`_open_loop.py`): direct then sluicegate at sluicegate's rate, then direct and
    the target at the target's (a slower target at sluicegate's rate would only measure
    its backlog, and that backlog would disturb the next rounds)."""
    rate = 0.8 * statistics.median(results["sluicegate req/s @64"])
    results.setdefault("open-loop rate req/s", []).append(rate)
    measured = await _open_paths(ep, rate, seconds, headers, ("direct", "sluicegate"))
    _record_open(results, measured, measured["direct"][0])
    if ep.target is not None:
        rate = 0.8 * statistics.median(results["target req/s @64"])
        results.setdefault("target open-loop rate req/s", []).append(rate)
        measured = await _open_paths(ep, rate, seconds, headers, ("direct", "target"))
        direct = measured.pop("direct")[0]
        results.setdefault("target open-loop direct p99 ms", []).append(direct)
        _record_open(results, measured, direct)


def _record_open(
    results: dict[str, list[float]],
    measured: dict[str, tuple[float, float, float | None]],
    direct: float,
) -> None:
    """File one open loop's p99 and failures per path, and each one's added p99 over
    `direct` (the direct path's p99 at the same rate)."""
    for name, (p99, failed, _) in measured.items():
        results.setdefault(f"{name} open-loop failed", []).append(failed)
        results.setdefault(f"{name} open-loop p99 ms", []).append(p99)
        if name != "direct":
            results.setdefault(f"{name} open-loop added p99 ms", []).append(p99 - direct)


async def _open_paths(
    ep: Endpoints,
    rate: float,
    seconds: float,
    headers: dict[str, str],
    only: tuple[str, ...] | None = None,
) -> dict[str, tuple[float, float, float | None]]:
    """Open loop at `rate` on every path (or those named in `only`) in turn: per path,
    its p99 (ms), its failed requests and its server's CPU us per request (None
    without its pid)."""
    pids = _cpu_pids(ep)
    out: dict[str, tuple[float, float, float | None]] = {}
    for name, base in paths(ep):
        if only is not None and name not in only:
            continue
        pid = pids[name]
        began = cpu_seconds(pid) if pid is not None else 0.0
        sent = await open_loop(base + _CHAT, BODY, rate, seconds, headers)
        cpu = None
        if pid is not None:
            cpu = (cpu_seconds(pid) - began) / max(len(sent.latencies), 1) * 1e6
        out[name] = (percentile(sent.latencies, 99) * 1e3, sent.failed, cpu)
    return out


async def measure_open_sweep(
    ep: Endpoints,
    rates: list[float],
    fractions: list[float],
    rounds: int,
    seconds: float,
    on_round: Callable[[int], object] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """`benchmarks/open_loop_sweep.py`: per round, part 2's closed loop on every path,
    then an open loop of `seconds` at each rate on every path. Rates are `rates`, or
    else `fractions` of the gateway's median closed-loop rate in the first round.

    Returns:
        The rates, and lists over rounds: the closed loop's keys (as `measure_overhead`'s)
        and, per rate and path, ``<rate> <path> p99``, ``failed``, ``cpu`` (with its pid)
        and ``added`` (minus direct, same round); `on_round(n)` after each round.
    """
    results: dict[str, list[float]] = {}
    session = _Load({})
    try:
        await _closed_round(session, ep, 1.0, {})  # warm up: connections, caches
        for n in range(rounds):
            await _closed_round(session, ep, seconds, results)
            if not rates:
                top = statistics.median(results["sluicegate req/s @64"])
                rates = [round(f * top, -1) for f in fractions]
            for rate in rates:
                measured = await _open_paths(ep, rate, seconds, {})
                for name, (p99, failed, cpu) in measured.items():
                    key = f"{rate:.0f} {name}"
                    results.setdefault(f"{key} p99", []).append(p99)
                    results.setdefault(f"{key} failed", []).append(failed)
                    if cpu is not None:
                        results.setdefault(f"{key} cpu", []).append(cpu)
                    if name != "direct":
                        results.setdefault(f"{key} added", []).append(p99 - measured["direct"][0])
            if on_round is not None:
                on_round(n + 1)
    finally:
        await session.close()
    return rates, results


def paths(ep: Endpoints) -> list[tuple[str, str]]:
    """(name, base URL) of every path measured: direct, sluicegate, and the target."""
    measured = [("direct", ep.direct), ("sluicegate", ep.gateway)]
    if ep.target is not None:
        measured.append(("target", ep.target))
    return measured


async def measure_overhead(ep: Endpoints, options: OverheadOptions) -> dict[str, list[float]]:
    """Part 2: per round, latency at concurrency 1 then req/s at 64, every path in turn;
    then, per round, an open loop at 80 % of each gateway's median closed-loop rate
    (`_open_round`).

    Returns:
        Lists over rounds: ``<path> p50 ms``, ``<path> p99 ms``, ``<path> added p50 ms``
        (minus direct, same round), ``<path> req/s @64``, ``<path> cpu us/req @64`` (the
        upstream's CPU for direct; the target's only with its pid),
        ``<path> open-loop p99 ms`` and ``<path> open-loop added p99 ms``; the rates,
        ``open-loop rate req/s`` (sluicegate's) and ``target open-loop rate req/s``, and
        ``target open-loop direct p99 ms`` (direct at the target's rate).
    """
    results: dict[str, list[float]] = {}
    session = _Load(_auth(options))
    try:
        for _, base in paths(ep):  # warm every path up: connections, caches
            await _latencies(session, base + _CHAT, max(options.latency_requests // 5, 20))
        for _ in range(options.rounds):
            pct: dict[str, dict[int, float]] = {}
            for name, base in paths(ep):
                lat = await _latencies(session, base + _CHAT, options.latency_requests)
                pct[name] = {q: percentile(lat, q) * 1e3 for q in (50, 99)}
            for name, by_q in pct.items():
                for q, value in by_q.items():
                    results.setdefault(f"{name} p{q} ms", []).append(value)
                    if name != "direct":
                        added = value - pct["direct"][q]
                        results.setdefault(f"{name} added p{q} ms", []).append(added)
            await _closed_round(session, ep, options.throughput_s, results)
        if options.open_loop_s > 0:
            for _ in range(options.rounds):
                await _open_round(ep, options.open_loop_s, _auth(options), results)
    finally:
        await session.close()
    return results


def _auth(options: OverheadOptions) -> dict[str, str]:
    key = options.target_key
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def stream_body(events: int) -> bytes:
    """A streamed request asking the bench upstream for `events` chunks."""
    return STREAM_BODY[:-1] + b', "events": ' + str(events).encode() + b"}"


async def _stream_events(
    session: aiohttp.ClientSession, url: str, streams: int, events: int | None = None
) -> int:
    body = STREAM_BODY if events is None else stream_body(events)

    async def one() -> int:
        seen = 0
        try:
            async with session.post(url, data=body) as r:
                async for line in r.content:
                    seen += line.startswith(b"data: ")
        except (aiohttp.ClientError, TimeoutError):
            pass  # an overloaded target dropped it: the shortfall shows in ``events N=``
        return seen

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def _stream_batch(
    session: aiohttp.ClientSession, url: str, pids: dict[str, int], n: int, events: int
) -> tuple[int, dict[str, float]]:
    """N concurrent streams of `events` chunks: chunks received, CPU seconds per pid."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    received = await _stream_events(session, url, n, events)
    return received, {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}


async def measure_streaming(ep: Endpoints, options: OverheadOptions) -> dict[str, list[float]]:
    """Part 3: per round and N, CPU us per event of the gateway and of the upstream, and
    (from streams of `events` and of `short_events` chunks) each one's marginal CPU per
    chunk and fixed CPU per stream.

    Returns:
        Lists over rounds: ``<who> us/event N=<n>``, ``events N=<n>``,
        ``<who> marginal us/chunk N=<n>`` and ``<who> fixed us/stream N=<n>``, where
        ``<who>`` is ``gateway``, ``upstream`` and, with its pid, ``target``.
    """
    results: dict[str, list[float]] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    urls = [("gateway", ep.gateway)]
    if ep.target is not None:
        urls.append(("target", ep.target))
    long, short = options.events, options.short_events
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, headers=_auth(options)
    ) as session:
        for _, base in urls:
            await _stream_events(session, base + _CHAT, 4)  # warm-up
        for _ in range(options.rounds):
            for n in options.streams:
                for who, base in urls:
                    pids = {who: ep.gateway_pid if who == "gateway" else ep.target_pid}
                    pids["upstream"] = ep.upstream_pid
                    measured = {k: v for k, v in pids.items() if v is not None}
                    _note_streams(
                        results,
                        n,
                        await _stream_batch(session, base + _CHAT, measured, n, long),
                        await _stream_batch(session, base + _CHAT, measured, n, short),
                        upstream=who == "gateway",
                    )
    return results


def _note_streams(
    results: dict[str, list[float]],
    n: int,
    long: tuple[int, dict[str, float]],
    short: tuple[int, dict[str, float]],
    *,
    upstream: bool,
) -> None:
    """Per chunk, marginal and fixed CPU of each measured process from two batches.

    The stream lengths are the chunks received, not asked for: a gateway that drops the
    body's ``events`` field gets equal lengths, and then no marginal figure."""
    (events, cpu), (short_events, short_cpu) = long, short
    if upstream:
        results.setdefault(f"events N={n}", []).append(float(events))
    extra = (events - short_events) / n
    for who, used in cpu.items():
        if who == "upstream" and not upstream:
            continue  # the upstream's cost is noted once per round, beside the gateway's
        results.setdefault(f"{who} us/event N={n}", []).append(used / max(events, 1) * 1e6)
        if extra < 1:
            continue
        per_long, per_short = used / n, short_cpu[who] / n
        marginal = (per_long - per_short) / extra
        results.setdefault(f"{who} marginal us/chunk N={n}", []).append(marginal * 1e6)
        fixed = per_long - marginal * events / n
        results.setdefault(f"{who} fixed us/stream N={n}", []).append(fixed * 1e6)


def median(values: list[float]) -> float:
    """The median of `values` (the figure over rounds)."""
    return statistics.median(values)
