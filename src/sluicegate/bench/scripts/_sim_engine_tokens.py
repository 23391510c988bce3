"""CPU per generated token of the simulator's engine loop, prefix caching off vs on.

No HTTP: 400 requests of ~250 prompt tokens and 200 output tokens through one
`SimEngine` on a real event loop with microsecond latencies; process CPU divided by the
tokens generated, best of `--runs`, both settings in the same run.

    .venv/bin/python benchmarks/sim_engine_tokens.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

from sluicegate.sim import SimConfig, SimEngine
from sluicegate.sim._openai import ParsedRequest
from sluicegate.sim._plan import Planner

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["main"]


def us_per_token(cache: bool, requests: int) -> float:
    config = SimConfig(
        max_num_seqs=64,
        kv_cache_size=10**6,
        time_to_first_token=0.01,
        inter_token_latency=0.01,
        prefill_time_per_token=0.0,
        enable_prefix_caching=cache,
    )

    async def main() -> int:
        engine, planner = SimEngine(config, timer_slack_s=0.0), Planner(config)
        reqs = []
        for i in range(requests):
            text = f"tenant {i % 4} " + "word " * 200
            tokens = -(-len(text) // 4)
            plan = planner.plan(
                ParsedRequest("chat", "m", tokens, text, 200, True, False, 0, text), 0.0, ()
            )
            reqs.append(engine.submit(tokens, 200, text=text, token_text=plan.token_text))
        await asyncio.gather(*(r.wait_done() for r in reqs))
        return engine.counters.generation_tokens

    start = time.process_time()
    tokens = asyncio.run(main())
    return (time.process_time() - start) / tokens * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of `benchmarks/sim_engine_tokens.py` (`argv`: its arguments)."""
    parser = argparse.ArgumentParser(
        prog="sim_engine_tokens.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args(argv)
    off = min(us_per_token(False, args.requests) for _ in range(args.runs))
    on = min(us_per_token(True, args.requests) for _ in range(args.runs))
    print(f"prefix caching off: {off:.2f} us/token; on: {on:.2f} us/token ({on / off:.2f}x)")
