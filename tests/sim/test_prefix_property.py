"""Prefix-cache invariants under random workloads (hypothesis; a real loop, tiny times)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.sim import EngineStatistics, SimEngine

from .test_prefix import BASE, submit

#: Microsecond latencies: a scenario runs in milliseconds of real time.
TINY = BASE.replace(
    time_to_first_token=0.01, inter_token_latency=0.01, prefill_time_per_token=0.001
)


PREFIXES = ("a" * 64, "b" * 64, "a" * 32 + "c" * 32)


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(PREFIXES),
            st.integers(0, 200),  # extra prompt characters
            st.integers(1, 40),  # output tokens
            st.one_of(st.none(), st.integers(0, 39)),  # abort after this many tokens
        ),
        min_size=1,
        max_size=12,
    ),
    kv=st.integers(120, 600),
)
def test_cache_invariants_hold_under_any_workload(
    requests: list[tuple[str, int, int, int | None]], kv: int
) -> None:
    """Evictable blocks always fit in free KV; hits never exceed queries; at the end
    nothing is held and every block is evictable."""

    async def scenario() -> list[EngineStatistics]:
        eng = SimEngine(TINY.replace(kv_cache_size=kv, max_num_seqs=3), timer_slack_s=0.0)
        samples: list[EngineStatistics] = []

        async def one(prefix: str, extra: int, output: int, abort: int | None) -> None:
            text = prefix + "x" * extra
            if -(-len(text) // 4) + output > kv:
                return
            req = submit(eng, text, output)
            while not req.done:
                await req.wait_progress(req.generated)
                samples.append(eng.statistics())
                if abort is not None and req.generated >= abort:
                    eng.abort(req)

        await asyncio.gather(*(one(*r) for r in requests))
        samples.append(eng.statistics())
        hits, queries = eng.counters.prefix_cache_hits, eng.counters.prefix_cache_queries
        assert 0 <= hits <= queries
        return samples

    loop = asyncio.new_event_loop()
    try:
        samples = loop.run_until_complete(scenario())
    finally:
        loop.close()
    for stats in samples:
        assert stats.kv_used_tokens <= kv
        assert stats.evictable_blocks * 16 <= kv - stats.kv_used_tokens
        assert stats.evictable_blocks <= stats.cached_blocks
    final = samples[-1]
    assert (final.running, final.kv_used_tokens) == (0, 0)
    assert final.cached_blocks == final.evictable_blocks
