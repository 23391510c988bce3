"""Prefix caching in the engine (virtual time): hits, continuations, eviction, metrics."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.sim import RequestState, SimConfig, SimEngine, SimRequest
from sluicegate.sim._prefix import BlockHasher, PrefixCache

from .test_engine import scrape

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

BASE = SimConfig(
    max_num_seqs=4,
    kv_cache_size=10_000,
    time_to_first_token=100.0,
    inter_token_latency=10.0,
    prefill_time_per_token=1.0,
    time_factor_under_load=1.0,
    enable_prefix_caching=True,
    block_size=16,
)
WORD = " abc"  # one 4-character token, as the simulator's filler words are


def engine(**changes: object) -> SimEngine:
    """An engine with exact token times (no timer slack)."""
    return SimEngine(BASE.replace(**changes), timer_slack_s=0.0)


def submit(eng: SimEngine, text: str, output_tokens: int) -> SimRequest:
    """Submit `text` (4 characters a token) generating `output_tokens` copies of WORD."""
    tokens = -(-len(text) // 4)
    return eng.submit(tokens, output_tokens, text=text, token_text=lambda _: WORD)


async def ttft(req: SimRequest) -> float:
    """Time from arrival to the first token."""
    await req.wait_progress(0)
    assert req.first_token_at is not None
    return req.first_token_at - req.arrival_at


async def test_a_repeated_prompt_prefills_only_its_uncached_tail() -> None:
    """40 tokens = 2 full blocks + 8: the second run prefills 8 tokens, not 40."""
    eng = engine()
    prompt = "p" * 160
    first = submit(eng, prompt, 3)
    assert await ttft(first) == pytest.approx(0.1 + 0.040)
    await first.wait_done()
    second = submit(eng, prompt, 3)
    assert await ttft(second) == pytest.approx(0.1 + 0.008)
    assert (first.cached_tokens, second.cached_tokens) == (0, 32)
    other = submit(eng, "q" * 160, 3)  # a different prompt shares nothing
    assert await ttft(other) == pytest.approx(0.1 + 0.040)


async def test_the_last_token_is_always_computed() -> None:
    """A prompt of exactly two cached blocks still prefills its last block (vLLM)."""
    eng = engine()
    await submit(eng, "p" * 128, 1).wait_done()
    again = submit(eng, "p" * 128, 1)
    assert await ttft(again) == pytest.approx(0.1 + 0.016)
    assert again.cached_tokens == 16


async def test_a_continuation_hits_the_blocks_its_first_run_generated() -> None:
    """Cut after 30 tokens, prompt + text so far prefills only past the last full block."""
    eng = engine()
    prompt = "p" * 160  # 40 tokens
    first = submit(eng, prompt, 100)
    while first.generated < 30:
        await first.wait_progress(first.generated)
    eng.abort(first)  # the gateway closed the upstream request: the pause
    assert first.state is RequestState.ABORTED
    assert eng.statistics().evictable_blocks == (160 + 30 * 4) // 64
    resumed = submit(eng, prompt + WORD * 30, 70)  # 70 tokens: 4 full blocks cached
    assert resumed.prompt_tokens == 70
    assert await ttft(resumed) == pytest.approx(0.1 + 0.006)
    assert resumed.cached_tokens == 64
    await resumed.wait_done()
    metrics = scrape(eng)
    assert metrics["vllm:prefix_cache_queries_total"] == 40 + 70
    assert metrics["vllm:prefix_cache_hits_total"] == 64


async def test_without_prefix_caching_nothing_hits() -> None:
    """The default engine prefills everything and reports zero queries and hits."""
    eng = engine(enable_prefix_caching=False)
    for _ in range(2):
        req = submit(eng, "p" * 160, 2)
        assert await ttft(req) == pytest.approx(0.14)
        await req.wait_done()
    stats, metrics = eng.statistics(), scrape(eng)
    assert (stats.cached_blocks, stats.evictable_blocks) == (0, 0)
    assert metrics["vllm:prefix_cache_queries_total"] == 0
    assert metrics["vllm:prefix_cache_hits_total"] == 0


async def test_cached_blocks_are_bounded_by_free_kv_and_evicted_lru() -> None:
    """Released blocks live in free KV; a new request's KV evicts the oldest first."""
    eng = engine(kv_cache_size=160, max_num_seqs=1)
    samples = []

    async def run(text: str, output: int) -> SimRequest:
        req = submit(eng, text, output)
        while not req.done:
            await req.wait_progress(req.generated)
            samples.append(eng.statistics())
        return req

    await run("a" * 256, 1)  # 64 tokens: 4 blocks, released
    await run("b" * 256, 1)  # 4 more: 8 blocks = 128 tokens fit in 160 free
    assert eng.statistics().evictable_blocks == 8
    await run("c" * 384, 40)  # 96 + 40 tokens of KV leave room for 1 block at the peak
    for stats in samples:
        assert stats.evictable_blocks * 16 <= stats.kv_cache_size - stats.kv_used_tokens
    a_again = await run("a" * 256, 1)
    assert a_again.cached_tokens == 0  # a's blocks were the least recently released
    c_again = await run("c" * 384, 1)
    assert c_again.cached_tokens > 0


async def test_recompute_preemption_reuses_the_cache() -> None:
    """A request preempted for KV is prefilled again mostly from its cached blocks."""
    eng = engine(kv_cache_size=200, max_num_seqs=2)
    reqs = [submit(eng, ch * 256, 60) for ch in "xy"]  # 2 x (64 + 60) > 200
    await asyncio.gather(*(r.wait_done() for r in reqs))
    stats, metrics = eng.statistics(), scrape(eng)
    assert stats.preemptions >= 1
    assert metrics["vllm:prefix_cache_hits_total"] >= 64
    assert all(r.generated == 60 for r in reqs)


async def test_block_hashes_chain_and_grow() -> None:
    """Equal prefixes give equal hashes; a block's hash depends on every block before it."""
    one = BlockHasher("a" * 64 + "b" * 64, block_size=16)
    two = BlockHasher("a" * 64 + "c" * 64, block_size=16)
    three = BlockHasher("z" * 64 + "b" * 64, block_size=16)
    assert one.hashes[0] == two.hashes[0] != three.hashes[0]
    assert len({one.hashes[1], two.hashes[1], three.hashes[1]}) == 3
    grown = BlockHasher("a" * 60, block_size=16)
    assert grown.hashes == []
    assert grown.extend("a" * 4) == 1
    assert grown.hashes == one.hashes[:1]


async def test_prefix_cache_refcounts_and_tail_first_eviction() -> None:
    """Held blocks are never evicted; released ones go tail first, oldest release first."""
    cache = PrefixCache(block_size=16)
    cache.hold([1, 2, 3])
    cache.hold([1, 2])  # shared by a second request
    cache.release([1, 2, 3])
    assert cache.evictable_blocks == 1  # 1 and 2 are still held
    assert cache.cached_prefix([1, 2, 3, 4], limit=10) == 3
    cache.release([1, 2])
    assert cache.evict_to(free_tokens=32) == 1  # room for two blocks: 3 went first
    assert cache.cached_prefix([1, 2, 3], limit=10) == 2
    assert cache.cached_prefix([1, 2, 3], limit=1) == 1
    assert cache.evict_to(free_tokens=0) == 2
    assert len(cache) == 0
