"""Parts 2 and 3 as report sections: run `_overhead`'s measurements, build the figures."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Final

from ._figures import Figure, PartResult, Target
from ._overhead import measure_overhead, measure_streaming, running

if TYPE_CHECKING:
    from ._overhead import OverheadOptions

__all__ = ["overhead_figures", "rounds_table", "run_overhead", "run_streaming"]

#: How the reports name each upstream server (`_upstream.SERVERS`).
_UPSTREAM: Final = {"raw": "raw-protocol", "aiohttp": "aiohttp.web"}


def _median(results: dict[str, list[float]], key: str) -> float:
    return statistics.median(results[key])


def rounds_table(results: dict[str, list[float]]) -> str:
    """Every measured series: its median and each round's value."""
    lines = ["| metric | median | rounds |", "|---|---|---|"]
    for name, values in results.items():
        shown = ", ".join(f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}" for v in values)
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.3f} |" if abs(med) < 100 else f"| {name} | {med:,.0f} |")
        lines[-1] += f" {shown} |"
    return "\n".join(lines)


def overhead_figures(results: dict[str, list[float]], *, pinned: bool) -> list[Figure]:
    """Part 2's headline figures for sluicegate and, if measured, the target."""
    figures: list[Figure] = []
    for name in ("sluicegate", "target"):
        if f"{name} added p50 ms" not in results:
            continue
        ours = name == "sluicegate"
        for q, bound in ((50, 0.2), (99, 0.6)):
            figures.append(
                Figure(
                    f"{name}: added latency p{q}, concurrency 1",
                    _median(results, f"{name} added p{q} ms"),
                    "ms",
                    _median(results, f"direct p{q} ms"),
                    f"direct p{q}, same rounds",
                    Target("<=", bound, f"<= {bound:g} ms") if ours else None,
                    note="median over rounds of through minus direct",
                )
            )
        figures.append(
            Figure(
                f"{name}: req/s at concurrency 64" + (" (gateway on one core)" if pinned else ""),
                _median(results, f"{name} req/s @64"),
                "req/s",
                _median(results, "direct req/s @64"),
                "direct, same rounds",
                Target(">=", 2500, ">= 2,500 per core") if ours else None,
                note="" if pinned or not ours else "not pinned: per-core figure unknown",
            )
        )
        figures.extend(_cpu_and_open_loop(results, name))
    return figures


def _cpu_and_open_loop(results: dict[str, list[float]], name: str) -> list[Figure]:
    """CPU per request at 64 (against the upstream's) and the open loop's added p99."""
    ours = name == "sluicegate"
    figures = []
    if f"{name} cpu us/req @64" in results and "direct cpu us/req @64" in results:
        figures.append(
            Figure(
                f"{name}: CPU per non-streamed request, concurrency 64",
                _median(results, f"{name} cpu us/req @64"),
                "us",
                _median(results, "direct cpu us/req @64"),
                "the upstream's CPU per request, direct, same rounds",
                Target("<=", 2.0, "<= 2x the upstream's", on="ratio") if ours else None,
            )
        )
    if f"{name} open-loop added p99 ms" in results:
        # Each gateway at 80 % of its own rate; the direct path at the same rate.
        prefix = "" if ours else f"{name} "
        direct = "direct open-loop p99 ms" if ours else f"{name} open-loop direct p99 ms"
        figures.append(
            Figure(
                f"{name}: added latency p99, open loop at 80 % of its own max rate",
                _median(results, f"{name} open-loop added p99 ms"),
                "ms",
                _median(results, direct),
                "direct p99 at the same rate, same rounds",
                Target("<=", 5.0, "<= 5 ms") if ours else None,
                note=f"rate {_median(results, f'{prefix}open-loop rate req/s'):,.0f} req/s",
            )
        )
    return figures


def run_overhead(options: OverheadOptions, *, command: str) -> PartResult:
    """Part 2: start the processes, measure, and build the section.

    Raises:
        RuntimeError: a process did not start.
    """
    began = time.monotonic()
    with running(options) as endpoints:
        results = asyncio.run(measure_overhead(endpoints, options))
    pin = (
        f"gateway pinned to core {options.gateway_core}, upstream and load generator to core "
        f"{options.load_core}"
        if endpoints.pinned
        else "not pinned (fewer than 2 usable cores or no taskset)"
    )
    target = f" The target {options.target} is measured in the same rounds." * bool(options.target)
    return PartResult(
        part="overhead",
        title="2. Gateway overhead (added latency, throughput)",
        command=command,
        method=(
            f"A minimal {_UPSTREAM[options.upstream]} upstream on loopback; the same requests "
            "direct and through "
            f"`sluicegate serve` (flow control on, limit never reached), interleaved, "
            f"{options.rounds} rounds of {options.latency_requests} sequential requests "
            f"(concurrency 1) and {options.throughput_s:g} s closed-loop at concurrency 64 per "
            f"path. {pin}.{target}"
        ),
        figures=overhead_figures(results, pinned=endpoints.pinned),
        tables=[rounds_table(results)],
        seconds=time.monotonic() - began,
        raw={"results": results, "pinned": endpoints.pinned},
    )


def streaming_figures(
    results: dict[str, list[float]], streams: tuple[int, ...], upstream: str = "raw"
) -> list[Figure]:
    """Part 3's headline figures: gateway CPU per chunk, baseline the upstream's; its
    marginal CPU per chunk and fixed CPU per stream; the target's, when measured."""
    figures = []
    for n in streams:
        figures.append(
            Figure(
                f"gateway CPU per relayed SSE chunk, {n} concurrent streams",
                _median(results, f"gateway us/event N={n}"),
                "us",
                _median(results, f"upstream us/event N={n}"),
                f"{_UPSTREAM[upstream]} upstream's CPU per chunk written",
                Target("<=", 50, "<= 50 us"),
            )
        )
        for kind, unit, bound, what in (
            ("marginal", "us/chunk", 12.0, "per extra chunk"),
            ("fixed", "us/stream", 100.0, "per stream"),
        ):
            key = f"gateway {kind} {unit} N={n}"
            if key not in results:
                continue
            figures.append(
                Figure(
                    f"gateway {kind} CPU {what}, {n} concurrent streams",
                    _median(results, key),
                    "us",
                    _median(results, f"upstream {kind} {unit} N={n}"),
                    f"the upstream's {kind} CPU, same batches",
                    Target("<=", bound, f"<= {bound:g} us"),
                )
            )
        if f"target us/event N={n}" in results:
            figures.append(
                Figure(
                    f"target CPU per relayed SSE chunk, {n} concurrent streams",
                    _median(results, f"target us/event N={n}"),
                    "us",
                    _median(results, f"gateway us/event N={n}"),
                    "sluicegate's, same rounds",
                )
            )
    return figures


def run_streaming(options: OverheadOptions, *, command: str) -> PartResult:
    """Part 3: start the processes, measure, and build the section.

    Raises:
        RuntimeError: a process did not start.
    """
    began = time.monotonic()
    with running(options) as endpoints:
        results = asyncio.run(measure_streaming(endpoints, options))
    return PartResult(
        part="streaming",
        title="3. Streaming cost (gateway CPU per relayed chunk)",
        command=command,
        method=(
            f"N concurrent streams of {options.events} SSE chunks, one every "
            f"{options.gap_ms:g} ms, through the gateway; its CPU time (all threads, from "
            "/proc schedstat) over the batch divided by the chunks the client received. "
            f"A second batch of {options.short_events}-chunk streams gives the marginal CPU "
            "per chunk (the difference per stream over the difference in chunks) and the "
            f"fixed CPU per stream. {options.rounds} rounds, N in {list(options.streams)}; "
            f"a minimal {_UPSTREAM[options.upstream]} upstream."
        ),
        figures=streaming_figures(results, options.streams, options.upstream),
        notes=[
            "With few streams each chunk arrives alone and pays a whole event-loop wakeup "
            "(read from the upstream, write to the client); with more streams chunks share "
            "wakeups, in the gateway and in the upstream alike.",
        ],
        tables=[rounds_table(results)],
        seconds=time.monotonic() - began,
        raw={"results": results, "pinned": endpoints.pinned},
    )
