"""The engine model in virtual time (looptime): batching, KV cache, queueing, priority."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluicegate.sim import (
    InvalidRequestError,
    RequestState,
    SimConfig,
    SimEngine,
    SimRequest,
    WaitingQueueFullError,
)
from sluicegate.sim._metrics import make_registry, render_metrics

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

BASE = SimConfig(
    max_num_seqs=4,
    kv_cache_size=10_000,
    time_to_first_token=100.0,
    inter_token_latency=10.0,
    prefill_time_per_token=1.0,
    time_factor_under_load=1.0,
)


#: looptime wakes sleepers on its microsecond grid, so observed times may be 1 us late.
TICK = 1e-5


def engine(**changes: object) -> SimEngine:
    """An engine with exact token times (no timer slack)."""
    return SimEngine(BASE.replace(**changes), timer_slack_s=0.0)


async def token_times(req: SimRequest) -> list[float]:
    """Consume `req` as a streaming client would; return the loop time of each token."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    while not req.done:
        seen = len(times)
        count = await req.wait_progress(seen)
        times.extend([loop.time()] * (count - seen))
    return times


async def test_single_request_follows_ttft_prefill_and_itl() -> None:
    """TTFT = time-to-first-token + prompt x prefill; then one token per decode step."""
    eng = engine()
    start = asyncio.get_running_loop().time()
    req = eng.submit(prompt_tokens=20, output_tokens=5)
    times = await token_times(req)
    expected = [start + 0.12 + 0.01 * i for i in range(5)]
    assert times == pytest.approx(expected, abs=TICK)
    assert req.state is RequestState.FINISHED
    assert req.finished_at == pytest.approx(start + 0.16)
    assert eng.statistics().running == 0
    assert eng.statistics().kv_used_tokens == 0


async def test_ttft_grows_with_queue_length() -> None:
    """With one slot, the k-th request waits for k whole requests before its own TTFT."""
    eng = engine(max_num_seqs=1)
    reqs = [eng.submit(prompt_tokens=10, output_tokens=3) for _ in range(4)]
    assert eng.statistics().waiting == 3
    await asyncio.gather(*(r.wait_done() for r in reqs))
    service = 0.1 + 0.01 + 2 * 0.01  # ttft + prefill + two decode steps
    ttfts = [r.first_token_at - r.arrival_at for r in reqs]  # type: ignore[operator]
    assert ttfts == pytest.approx([0.11 + k * service for k in range(4)])
    queue = [r.admitted_at - r.arrival_at for r in reqs]  # type: ignore[operator]
    assert queue == pytest.approx([k * service for k in range(4)])


async def test_max_num_seqs_and_kv_limit_hold_at_every_token() -> None:
    """Running never exceeds max-num-seqs, KV never exceeds its size, everyone finishes."""
    eng = engine(max_num_seqs=3, kv_cache_size=100)
    reqs = [eng.submit(prompt_tokens=30, output_tokens=12) for _ in range(6)]
    samples = []

    async def watch(req: SimRequest) -> None:
        seen = 0
        while not req.done:
            seen = await req.wait_progress(seen)
            samples.append(eng.statistics())

    await asyncio.gather(*(watch(r) for r in reqs))
    assert samples
    assert max(s.running for s in samples) <= 3
    assert max(s.kv_used_tokens for s in samples) <= 100
    assert max(s.kv_cache_usage for s in samples) > 0.9  # the cache did fill
    assert all(r.generated == 12 and r.state is RequestState.FINISHED for r in reqs)
    assert eng.statistics().preemptions >= 1  # three requests outgrow 100 tokens together
    assert eng.statistics().kv_used_tokens == 0


async def test_load_stretches_decode_steps() -> None:
    """A full batch decodes at inter-token-latency x time-factor-under-load."""
    eng = engine(max_num_seqs=3, time_factor_under_load=2.0, prefill_time_per_token=0.0)
    full = [eng.submit(prompt_tokens=1, output_tokens=3) for _ in range(3)]
    times = await token_times(full[0])
    assert times[1] - times[0] == pytest.approx(0.02, abs=TICK)
    await asyncio.gather(*(r.wait_done() for r in full))
    alone = eng.submit(prompt_tokens=1, output_tokens=3)
    times = await token_times(alone)
    assert times[1] - times[0] == pytest.approx(0.01, abs=TICK)


async def test_priority_policy_admits_lowest_value_first() -> None:
    """Under `priority`, waiting requests are admitted by priority value, then arrival."""
    eng = engine(max_num_seqs=1, scheduling_policy="priority")
    blocker = eng.submit(prompt_tokens=1, output_tokens=1)
    waiting = [eng.submit(prompt_tokens=1, output_tokens=1, priority=p) for p in (5, 1, 3, 1, 0)]
    await asyncio.gather(blocker.wait_done(), *(r.wait_done() for r in waiting))
    order = sorted(waiting, key=lambda r: r.admitted_at or 0.0)
    assert [(r.priority, r.request_id) for r in order] == [(0, 5), (1, 2), (1, 4), (3, 3), (5, 1)]


async def test_fcfs_policy_ignores_priority() -> None:
    """Under `fcfs`, arrival order wins whatever the priority."""
    eng = engine(max_num_seqs=1)
    reqs = [eng.submit(prompt_tokens=1, output_tokens=1, priority=p) for p in (5, 1, 0)]
    await asyncio.gather(*(r.wait_done() for r in reqs))
    assert sorted(reqs, key=lambda r: r.admitted_at or 0.0) == reqs


async def test_abort_frees_slot_and_kv_at_once() -> None:
    """Aborting a running request admits the next one in the same instant."""
    eng = engine(max_num_seqs=1)
    first = eng.submit(prompt_tokens=50, output_tokens=100)
    second = eng.submit(prompt_tokens=10, output_tokens=1)
    await first.wait_progress(0)
    now = asyncio.get_running_loop().time()
    eng.abort(first)
    assert first.state is RequestState.ABORTED
    assert second.state is RequestState.RUNNING
    assert second.admitted_at == now
    stats = eng.statistics()
    assert (stats.running, stats.waiting, stats.kv_used_tokens, stats.aborted) == (1, 0, 10, 1)
    eng.abort(first)  # idempotent
    assert eng.statistics().aborted == 1


async def test_stalled_request_holds_its_slot_until_aborted() -> None:
    """A stall takes a slot and KV and never produces a token."""
    eng = engine(max_num_seqs=1)
    stalled = eng.submit(prompt_tokens=5, output_tokens=5, stall=True)
    behind = eng.submit(prompt_tokens=5, output_tokens=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(60):
            await stalled.wait_progress(0)
    assert (stalled.generated, behind.state) == (0, RequestState.WAITING)
    eng.abort(stalled)
    await behind.wait_done()
    assert behind.state is RequestState.FINISHED


async def test_waiting_queue_limit_rejects() -> None:
    """Beyond max-waiting-queue-length, submit raises WaitingQueueFullError (HTTP 429)."""
    eng = engine(max_num_seqs=1, max_waiting_queue_length=1)
    eng.submit(prompt_tokens=1, output_tokens=10)
    eng.submit(prompt_tokens=1, output_tokens=10)
    with pytest.raises(WaitingQueueFullError) as info:
        eng.submit(prompt_tokens=1, output_tokens=10)
    assert info.value.status == 429
    assert eng.statistics().waiting == 1


async def test_request_larger_than_kv_cache_is_refused() -> None:
    """A request that could never fit is refused instead of blocking the queue forever."""
    eng = engine(kv_cache_size=50)
    with pytest.raises(InvalidRequestError):
        eng.submit(prompt_tokens=40, output_tokens=11)


def scrape(eng: SimEngine) -> dict[str, float]:
    """Parse the engine's /metrics text into {sample name + labels: value}."""
    text = render_metrics(make_registry(eng, "m")).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "model_name"}
            key = sample.name + (str(sorted(labels.items())) if labels else "")
            out[key] = sample.value
    return out


async def test_metrics_agree_with_engine_state() -> None:
    """Gauges mirror statistics() mid-run; counters and histograms add up at the end."""
    eng = engine(max_num_seqs=2, kv_cache_size=1000)
    reqs = [eng.submit(prompt_tokens=10, output_tokens=4) for _ in range(5)]
    await reqs[0].wait_progress(0)
    stats, metrics = eng.statistics(), scrape(eng)
    assert metrics["vllm:num_requests_running"] == stats.running == 2
    assert metrics["vllm:num_requests_waiting"] == stats.waiting == 3
    assert metrics["vllm:kv_cache_usage_perc"] == pytest.approx(stats.kv_used_tokens / 1000)
    assert metrics["vllm:gpu_cache_usage_perc"] == metrics["vllm:kv_cache_usage_perc"]
    await asyncio.gather(*(r.wait_done() for r in reqs))
    metrics = scrape(eng)
    assert metrics["vllm:generation_tokens_total"] == 20
    assert metrics["vllm:prompt_tokens_total"] == 50
    assert metrics["vllm:request_success_total[('finished_reason', 'length')]"] == 5
    assert metrics["vllm:time_to_first_token_seconds_count"] == 5
    assert metrics["vllm:inter_token_latency_seconds_count"] == 15
    assert metrics["vllm:request_queue_time_seconds_count"] == 5
    assert metrics["vllm:e2e_request_latency_seconds_count"] == 5
    assert metrics["vllm:num_requests_running"] == metrics["vllm:kv_cache_usage_perc"] == 0


async def run_scenario(seed: int) -> list[tuple[int, float, float]]:
    """Replay a fixed arrival sequence through planner and engine; return the timeline."""
    from sluicegate.sim._openai import ParsedRequest
    from sluicegate.sim._plan import Planner

    config = BASE.replace(seed=seed, max_num_seqs=2, time_factor_under_load=3.0)
    eng, planner = SimEngine(config, timer_slack_s=0.0), Planner(config)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reqs = []
    for gap in (0.0, 0.005, 0.0, 0.05, 0.001, 0.2, 0.0):
        await asyncio.sleep(gap)
        parsed = ParsedRequest("chat", "m", 7, "x", None, True, False, 0)
        plan = planner.plan(parsed, 0.0, ())
        reqs.append(eng.submit(7, plan.output_tokens, finish_reason=plan.finish_reason))
    await asyncio.gather(*(r.wait_done() for r in reqs))
    return [
        (r.output_tokens, round(r.first_token_at - t0, 4), round(r.finished_at - t0, 4))  # type: ignore[operator]
        for r in reqs
    ]


async def test_deterministic_for_a_seed_and_arrival_sequence() -> None:
    """Same seed and arrivals give the same lengths and times; another seed differs."""
    first = await run_scenario(seed=7)
    again = await run_scenario(seed=7)
    other = await run_scenario(seed=8)
    assert first == again
    assert [x[0] for x in first] != [x[0] for x in other]


async def test_close_aborts_everything_and_refuses_new_requests() -> None:
    """close() wakes every waiter and later submissions raise EngineClosedError."""
    from sluicegate.sim import EngineClosedError

    eng = engine(max_num_seqs=1)
    reqs = [eng.submit(prompt_tokens=1, output_tokens=50) for _ in range(3)]
    eng.close()
    await asyncio.gather(*(r.wait_done() for r in reqs))
    assert all(r.state is RequestState.ABORTED for r in reqs)
    assert repr(eng) == "<SimEngine running=0 waiting=0 kv=0/10000>"
    with pytest.raises(EngineClosedError):
        eng.submit(prompt_tokens=1, output_tokens=1)
