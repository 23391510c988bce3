"""`SubsetDetector` and `SubsetControllers` on their own (no gRPC)."""

from __future__ import annotations

from typing import Any

import pytest

import sluicegate as sg
from sluicegate.epp import SubsetControllers, SubsetDetector
from sluicegate.epp import _subset as subset_module
from sluicegate.gateway import BackendMetrics, Pool, UtilizationDetector

from .conftest import A, B, C, make_config

URL_A, URL_B, URL_C = (f"http://{e}" for e in (A, B, C))


def _pool(*, max_in_flight: int = 100, **sections: Any) -> Pool:
    config = make_config([A, B, C], max_in_flight=max_in_flight, **sections)
    return Pool(config.pools[0], config.flow_control, lambda: 100.0)


def test_utilization_subset_scores_only_its_backends_and_rechecks_at_the_scrape_interval() -> None:
    pool = _pool(
        pool={
            "saturation": {
                "type": "utilization",
                "scrape_interval": 0.25,
                "staleness": 10,
                "adaptive_limit": False,  # the thresholds alone, as upstream
            }
        }
    )
    detector = pool.detector
    assert isinstance(detector, UtilizationDetector)
    for url, waiting in ((URL_A, 9.0), (URL_B, 0.0), (URL_C, 1.0)):
        backend = detector.backends[url]
        detector.scrape_succeeded(
            backend, BackendMetrics(waiting, 0.0, 0.1), detector.scrape_started(backend)
        )
    subset = SubsetDetector(pool, frozenset({URL_A, URL_C}), lambda: 100.0)
    assert subset.recheck_interval == 0.25
    assert not subset.is_saturated()  # C scores 0.2
    assert subset.utilization() == pytest.approx(0.2)
    ticket_like = _Ticket()
    subset.on_dispatch(ticket_like)  # type: ignore[arg-type]
    assert ticket_like.assignment.backend.url == URL_C  # never B, though B scores 0
    subset.on_release(ticket_like)  # type: ignore[arg-type]
    assert detector.backends[URL_C].in_flight == 0
    only_a = SubsetDetector(pool, frozenset({URL_A}), lambda: 100.0)
    assert only_a.is_saturated()  # A scores 1.8: saturated, whatever B and C have
    assert only_a.has_endpoints()


def test_concurrency_subset_has_no_recheck_and_notifies_its_listener() -> None:
    pool = _pool(max_in_flight=1)
    subset = SubsetDetector(pool, frozenset({URL_B}), lambda: 0.0)
    assert subset.recheck_interval is None
    calls: list[int] = []
    subset.set_listener(lambda: calls.append(1))
    subset.notify()
    assert calls == [1]
    pool.detector.backends[URL_B].bind()
    assert subset.is_saturated()


class _Ticket:
    assignment: Any = None


@pytest.mark.asyncio
async def test_idle_subsets_are_closed_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subset_module, "MAX_SUBSETS", 2)
    pool = _pool()
    async with pool.controller:
        subsets = SubsetControllers(sg.FlowControlConfig(), [0])
        first = await subsets.controller(pool, frozenset({URL_A}))
        async with first.admit(sg.FlowKey("f", 0)):
            await subsets.controller(pool, frozenset({URL_B}))
            await subsets.controller(pool, frozenset({URL_A, URL_B}))  # B's is idle: closed
            assert len(subsets) == 2
            assert {urls for (_, urls), _ in subsets.items()} == {
                frozenset({URL_A}),
                frozenset({URL_A, URL_B}),
            }
        assert await subsets.controller(pool, frozenset({URL_A, URL_B, URL_C})) is pool.controller
        await subsets.aclose()
        with pytest.raises(sg.ControllerClosedError):
            await subsets.controller(pool, frozenset({URL_C}))
