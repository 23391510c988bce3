"""Added p99 latency in an open loop, at several rates: direct, through the gateway, and
through another gateway.

Part 2 of `sluicegate bench` measures the open loop at one rate, 80 % of the gateway's
closed-loop maximum, where a stall of the machine (a VM's host taking its CPU) can
swamp the figure. This sweep shows the whole curve: per round, a closed loop at
concurrency 64 on each path (its CPU per request and rate), then `--seconds` of open
loop at each rate on each path in turn, interleaved, so every path sees the same
machine. Processes and pinning as in part 2 (`bench._overhead.running`).

    .venv/bin/python benchmarks/open_loop_sweep.py [--fractions 0.2,0.4,0.6,0.8]
        [--rates 1000,2500] [--rounds 3] [--seconds 3]
        [--target URL --target-pid PID] [--upstream aiohttp|raw]

Rates are `--rates` (requests a second), or else `--fractions` of the gateway's median
closed-loop rate in the first round. Prints one markdown table: per rate and path, the
median p99 over rounds (the rounds' spread in brackets), the added p99 (minus direct,
same round) and the CPU per request of the path's server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import TYPE_CHECKING

from sluicegate.bench._overhead import OverheadOptions, measure_open_sweep, paths, running

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _cell(values: list[float] | None) -> str:
    """The median over rounds, the rounds' spread in brackets."""
    if not values:
        return "-"
    spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.1f}{spread}"


def table(rates: list[float], out: dict[str, list[float]], names: list[str]) -> str:
    """The markdown table of a sweep (medians over rounds, the spread in brackets)."""
    head = ["rate (req/s)", "direct p99 ms"]
    for name in names[1:]:
        head += [f"{name} p99 ms", f"{name} added p99 ms"]
    head += [f"{name} CPU us/req" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    closed = ["closed loop, c=64", "-"] + ["-", "-"] * (len(names) - 1)
    closed += [_cell(out.get(f"{name} cpu us/req @64")) for name in names]
    lines.append("| " + " | ".join(closed) + " |")
    for rate in rates:
        key = f"{rate:.0f}"
        row = [key, _cell(out.get(f"{key} direct p99"))]
        for name in names[1:]:
            row += [_cell(out.get(f"{key} {name} p99")), _cell(out.get(f"{key} {name} added"))]
        row += [_cell(out.get(f"{key} {name} cpu")) for name in names]
        lines.append("| " + " | ".join(row) + " |")
    failed = sum(sum(v) for k, v in out.items() if k.endswith(" failed"))
    lines.append("")
    lines.append(f"Failed requests: {failed:.0f}.")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/open_loop_sweep.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(
        prog="open_loop_sweep.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rates", type=_floats, default=[], help="requests/s, comma-separated")
    parser.add_argument("--fractions", type=_floats, default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per path, rate and round")
    parser.add_argument("--target", help="another gateway's base URL, measured beside ours")
    parser.add_argument("--target-pid", type=int, help="its process id, for its CPU")
    parser.add_argument("--backend-port", type=int, default=0, help="the upstream's port")
    parser.add_argument("--upstream", choices=("aiohttp", "raw"), default="aiohttp")
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    if args.target and not args.backend_port:
        parser.error("--target needs --backend-port (the upstream it forwards to)")
    options = OverheadOptions(
        target=args.target,
        target_pid=args.target_pid,
        backend_port=args.backend_port,
        upstream=args.upstream,
        gateway_core=args.gateway_core,
        load_core=args.load_core,
    )
    with running(options) as ep:
        names = [name for name, _ in paths(ep)]
        rates, out = asyncio.run(
            measure_open_sweep(
                ep,
                args.rates,
                args.fractions,
                args.rounds,
                args.seconds,
                lambda n: print(f"round {n} of {args.rounds} done", flush=True),
            )
        )
    print(table(rates, out, names))
