"""Pure pieces of the gateway: detectors, metric parsing (no network).

The tests are coroutines only so that pytest-asyncio owns a loop: the looptime plugin
creates (and leaks) one for synchronous tests, whose later collection fails other tests.
"""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.gateway import (
    BackendMetrics,
    UtilizationDetector,
    UtilizationSettings,
    parse_metrics,
)

# -- pure detector logic ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ticket() -> Any:
    class T:
        assignment: Any = None

    return T()


@pytest.mark.asyncio
async def test_score_counts_unseen_dispatches_until_a_scrape_sees_them() -> None:
    """Requests dispatched after a scrape started count as waiting until the next one."""
    clock = Clock()
    det = UtilizationDetector(["http://a"], UtilizationSettings(queue_depth_threshold=2), clock)
    backend = det.backends["http://a"]
    epoch = det.scrape_started(backend)
    det.scrape_succeeded(backend, BackendMetrics(0, 0, 0.1), epoch)
    assert not det.is_saturated()
    tickets = []
    for _ in range(2):
        assert not det.is_saturated()
        t = _ticket()
        det.on_dispatch(t)
        tickets.append(t)
    assert det.is_saturated()  # (0 waiting + 2 unseen) / 2 = 1
    epoch = det.scrape_started(backend)
    det.scrape_succeeded(backend, BackendMetrics(0, 2, 0.1), epoch)
    assert not det.is_saturated()  # the scrape saw them: running, not waiting
    det.on_release(tickets[0])
    assert backend.in_flight == 1
    assert backend.unseen == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("policy", "last_waiting", "saturated"),
    [
        ("fail-closed", 0, True),
        ("fail-open", 50, False),
        ("last-known", 0, False),
        ("last-known", 50, True),
    ],
)
async def test_stale_policies(policy: Any, last_waiting: float, saturated: bool) -> None:
    """Stale metrics are saturated, free, or taken as last seen, per stale_policy."""
    clock = Clock()
    settings = UtilizationSettings(stale_policy=policy, staleness=1.0)
    det = UtilizationDetector(["http://a"], settings, clock)
    backend = det.backends["http://a"]
    det.scrape_succeeded(backend, BackendMetrics(last_waiting, 0, 0.0), det.scrape_started(backend))
    clock.now += 5.0
    assert det.stale_backends() == 1
    assert det.is_saturated() is saturated


@pytest.mark.asyncio
async def test_unreachable_backends_are_not_endpoints() -> None:
    """A refused connection removes the backend from the pool until a scrape succeeds."""
    clock = Clock()
    det = UtilizationDetector(["http://a"], UtilizationSettings(stale_policy="fail-open"), clock)
    backend = det.backends["http://a"]
    det.scrape_failed(backend, "refused", reachable=False)
    assert not det.has_endpoints()
    assert det.is_saturated()
    det.scrape_succeeded(backend, BackendMetrics(0, 0, 0), det.scrape_started(backend))
    assert det.has_endpoints()


@pytest.mark.asyncio
async def test_parse_metrics_understands_vllm_and_sglang() -> None:
    """Both servers' names are read; several label sets are summed (KV: highest)."""
    vllm = (
        b"# HELP vllm:num_requests_waiting x\n"
        b'vllm:num_requests_waiting{model_name="a"} 3.0\n'
        b'vllm:num_requests_waiting{model_name="b"} 2.0\n'
        b'vllm:num_requests_running{model_name="a"} 7.0\n'
        b'vllm:gpu_cache_usage_perc{model_name="a"} 0.25\n'
        b'vllm:kv_cache_usage_perc{model_name="a",x="y z"} 0.5\n'
        b"vllm:num_requests_waiting_by_reason 99\n"
    )
    m = parse_metrics(vllm)
    assert (m.waiting, m.running, m.kv) == (5.0, 7.0, 0.5)
    m = parse_metrics(
        b"sglang:num_queue_reqs 4\nsglang:token_usage 0.9\nsglang:num_running_reqs 2\n"
    )
    assert (m.waiting, m.running, m.kv) == (4.0, 2.0, 0.9)
    with pytest.raises(ValueError, match="no vLLM or SGLang"):
        parse_metrics(b"process_cpu_seconds_total 3\n")
