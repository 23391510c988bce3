"""The adaptive limit, in virtual time against a model engine with a batch-size knee."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from sluicegate.gateway import (
    AdaptiveDetector,
    AdaptiveLimit,
    AdaptiveSettings,
    BackendMetrics,
    GatewayConfigError,
    UtilizationDetector,
    UtilizationSettings,
    parse_config,
)

BASE_TTFT = 0.1
SERVICE_S = 1.0


@dataclass
class Engine:
    """A continuous-batching engine: `slots` run at once, the rest wait FCFS.

    A request's first token comes BASE_TTFT after it is admitted; it holds its slot for
    SERVICE_S (times `slowdown`).
    """

    slots: int
    slowdown: float = 1.0
    running: int = 0
    waiting: list[int] = field(default_factory=list)
    max_waiting: int = 0


@dataclass
class Loop:
    """Events at literal times: (time, tie, kind, seq)."""

    limit: AdaptiveLimit
    engine: Engine
    now: float = 0.0
    in_flight: int = 0
    seq: int = 0
    events: list[tuple[float, int, str, int]] = field(default_factory=list)
    sent: dict[int, tuple[float, int]] = field(default_factory=dict)
    ties: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, at: float, kind: str, seq: int) -> None:
        heapq.heappush(self.events, (at, next(self.ties), kind, seq))

    def fill(self) -> None:
        """The gateway: always more demand than capacity (overload)."""
        while self.in_flight < self.limit.capacity and self.limit.waiting_since(self.now) is None:
            self.seq += 1
            self.in_flight += 1
            self.sent[self.seq] = (self.now, self.in_flight)
            self.limit.pending[self.seq] = self.now
            self.admit_or_wait(self.seq)

    def admit_or_wait(self, seq: int) -> None:
        e = self.engine
        if e.running < e.slots:
            e.running += 1
            self.push(self.now + BASE_TTFT, "first", seq)
            self.push(self.now + SERVICE_S * e.slowdown, "done", seq)
        else:
            e.waiting.append(seq)
            e.max_waiting = max(e.max_waiting, len(e.waiting))

    def run(self, until: float) -> None:
        self.fill()
        while self.events and self.events[0][0] <= until:
            self.now, _, kind, seq = heapq.heappop(self.events)
            if kind == "first":
                sent_at, in_flight = self.sent[seq]
                self.limit.first_token(seq, self.now - sent_at, in_flight, self.seq)
            else:
                self.in_flight -= 1
                self.limit.forget(seq)
                e = self.engine
                e.running -= 1
                while e.waiting and e.running < e.slots:
                    self.admit_or_wait(e.waiting.pop(0))
            self.fill()
        self.now = until


def new_limit() -> AdaptiveLimit:
    s = AdaptiveSettings()
    return AdaptiveLimit(s.initial_limit, s.min_limit, s.max_limit, s.ttft_tolerance)


def test_converges_on_the_batch_size_and_keeps_the_engine_queue_short() -> None:
    loop = Loop(new_limit(), Engine(slots=16))
    loop.run(60.0)
    assert 15 <= loop.limit.limit < 18
    loop.engine.max_waiting = 0
    loop.run(120.0)
    assert 15 <= loop.limit.limit < 18
    # Over a minute of overload at most one request at a time waited in the engine.
    assert loop.engine.max_waiting <= 1


def test_backs_off_when_the_backend_slows_down_then_recovers() -> None:
    engine = Engine(slots=32)
    loop = Loop(new_limit(), engine)
    loop.run(60.0)
    assert loop.limit.limit >= 30
    engine.slots = 8  # e.g. a smaller KV cache after a restart with other flags
    loop.run(120.0)
    assert 7 <= loop.limit.limit <= 9.5
    engine.slots = 24
    loop.run(240.0)
    assert 22 <= loop.limit.limit < 26


def test_a_uniformly_slower_backend_gets_a_new_base_ttft() -> None:
    limit = new_limit()
    for seq in range(1, 50):
        limit.first_token(seq, 0.1, 1, seq)
    assert limit.base_ttft == pytest.approx(0.1)
    # The backend became 3x slower for everyone: after two windows the base follows.
    for seq in range(50, 250):
        limit.first_token(seq, 0.3, 1, seq)
    assert limit.base_ttft == pytest.approx(0.3)


def test_errors_halve_the_limit_once_per_overshoot() -> None:
    limit = new_limit()
    limit.limit = 16.0
    limit.error(seq=10, latest_seq=12)
    assert limit.limit == 8.0
    limit.error(seq=11, latest_seq=12)  # sent before the decrease: no second halving
    assert limit.limit == 8.0
    limit.error(seq=13, latest_seq=13)
    assert limit.limit == 4.0
    assert limit.slow_start


def test_waiting_is_seen_without_a_timer() -> None:
    limit = new_limit()
    limit.first_token(1, 0.1, 1, 1)
    limit.pending[2] = 10.0
    assert limit.waiting_since(10.15) is None
    assert limit.waiting_since(10.3) == pytest.approx(0.1)
    limit.forget(2)
    assert limit.waiting_since(10.3) is None


def test_adaptive_is_the_default_and_validates_its_bounds() -> None:
    doc = {"pools": [{"name": "p", "backends": ["http://127.0.0.1:1"]}]}
    assert parse_config(doc).pools[0].saturation.type == "adaptive"
    bad = {"type": "adaptive", "initial_limit": 4, "min_limit": 8}
    with pytest.raises(GatewayConfigError, match="min_limit"):
        parse_config({"pools": [{"name": "p", "saturation": bad}]})


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_utilization_learns_the_batch_size_from_a_queue_and_counts_free_batch_slots() -> None:
    clock = Clock()
    det = UtilizationDetector(["http://a", "http://b"], UtilizationSettings(), clock)
    a, b = det.backends["http://a"], det.backends["http://b"]
    det.scrape_succeeded(a, BackendMetrics(0, 3, 0.0), det.scrape_started(a))
    det.scrape_succeeded(b, BackendMetrics(0, 3, 0.0), det.scrape_started(b))
    # No queue seen yet: free shares of the queue-depth threshold (5 each).
    assert det.slots() == (10.0, 10.0)
    det.scrape_succeeded(a, BackendMetrics(2, 16, 0.5), det.scrape_started(a))
    det.scrape_succeeded(a, BackendMetrics(0, 12, 0.5), det.scrape_started(a))
    free, capacity = det.slots()
    assert (free, capacity) == (4.0 + 5.0, 16.0 + 5.0)


def test_adaptive_slots_are_the_learned_limits_minus_in_flight() -> None:
    clock = Clock()
    det = AdaptiveDetector(["http://a", "http://b"], AdaptiveSettings(initial_limit=4), clock)
    det.backends["http://a"].bind()
    # Nothing confirmed yet: each backend may take 2 (the probe) of its limit of 4.
    assert det.slots() == (3.0, 4.0)
    for seq in range(1, 4):
        det.limits["http://b"].first_token(seq, 0.1, 3, seq)
    assert det.limits["http://b"].capacity == 5  # 3 worked: up to 3 + 2, grown to 5


def test_metrics_teach_the_batch_size_and_a_shown_queue_blocks_the_backend() -> None:
    clock = Clock()
    det = AdaptiveDetector(["http://a"], AdaptiveSettings(initial_limit=32), clock)
    a = det.backends["http://a"]
    state = det.limits["http://a"]
    for seq in range(1, 40):
        state.first_token(seq, 0.1, 20, seq)
    assert state.capacity == 22  # 20 worked, so up to 2 more; no batch known yet
    state.latest_sent = 40
    det.scrape_succeeded(a, BackendMetrics(2, 16, 0.3), det.scrape_started(a))
    assert state.batch == 16 and state.capacity == 16
    assert det.is_saturated()  # the engine queues: nothing more goes there
    clock.now += 0.05
    det.scrape_succeeded(a, BackendMetrics(0, 15, 0.3), det.scrape_started(a))
    assert not det.is_saturated()
    # A backend without metrics stays usable; a refused connection does not.
    det.scrape_failed(a, "no vLLM metrics", reachable=True)
    assert det.has_endpoints()
    det.scrape_failed(a, "refused", reachable=False)
    assert not det.has_endpoints()


def test_lower_priorities_test_the_untested_slots_the_highest_takes_proven_ones() -> None:
    clock = Clock()
    det = AdaptiveDetector(["http://a", "http://b"], AdaptiveSettings(initial_limit=32), clock)
    a, b = det.backends["http://a"], det.backends["http://b"]
    for url in ("http://a", "http://b"):
        for seq in range(1, 40):
            det.limits[url].first_token(seq, 0.1, 10, seq)  # 10 worked; 11, 12 untested
    for _ in range(10):
        a.bind()
    for _ in range(9):
        b.bind()
    assert det.proven_free() == 1 and not det.probe_only()

    def dispatch(priority: int) -> object:
        ticket: Any = SimpleNamespace(priority=priority, assignment=None)
        assert not det.is_saturated()
        det.on_dispatch(ticket)
        return ticket.assignment.backend

    assert dispatch(10) is b  # the top priority so far: b's last proven slot
    assert dispatch(-1) is a  # lower: a probe first, though b scores the same
    assert det.proven_free() == 0 and det.probe_only()
    assert dispatch(10) in (a, b)  # nothing proven left: a probe after all
    # A batch size from metrics proves every slot up to it.
    det.limits["http://a"].queued(12.0)
    assert det.limits["http://a"].proven == det.limits["http://a"].capacity == 12


def test_utilization_pools_also_get_the_adaptive_limit_unless_told_not_to() -> None:
    from sluicegate.gateway._pool import _new_detector

    def detector(**saturation: Any) -> object:
        doc = {"pools": [{"name": "p", "backends": ["http://a"], "saturation": saturation}]}
        return _new_detector(parse_config(doc).pools[0], Clock())

    assert isinstance(detector(type="utilization", adaptive_limit=False), UtilizationDetector)
    det = detector(type="utilization", kv_cache_threshold=0.5)
    assert isinstance(det, AdaptiveDetector)
    assert det.thresholds is not None and det.thresholds.kv_cache_threshold == 0.5
    a = det.backends["http://a"]
    # fail-closed: no metrics yet, no traffic (as the plain utilization detector).
    assert det.is_saturated() and det.stale_backends() == 1
    det.scrape_succeeded(a, BackendMetrics(0, 2, 0.2), det.scrape_started(a))
    assert not det.is_saturated()
    # The KV threshold still applies ...
    det.scrape_succeeded(a, BackendMetrics(0, 2, 0.6), det.scrape_started(a))
    assert det.is_saturated()
    det.scrape_succeeded(a, BackendMetrics(0, 2, 0.2), det.scrape_started(a))
    # ... and so does the learned limit: 2 untested requests, where the thresholds alone
    # would take up to 5 waiting in the engine's queue.
    for _ in range(2):
        assert not det.is_saturated()
        a.bind()
    assert det.is_saturated()
    # Metrics that stop coming: stale, saturated again.
    Clock.now += 2.0
    try:
        assert det.is_saturated() and det.stale_backends() == 1
    finally:
        Clock.now -= 2.0


def test_a_lower_priority_takes_a_probe_past_headroom() -> None:
    clock = Clock()
    det = AdaptiveDetector(["http://a"], AdaptiveSettings(initial_limit=32), clock)
    a = det.backends["http://a"]
    for seq in range(1, 40):
        det.limits["http://a"].first_token(seq, 0.1, 10, seq)
    det.top_priority = 10
    for _ in range(9):
        a.bind()
    assert not det.probe_for(0)  # a proven slot is free: headroom decides as usual
    a.bind()
    assert det.probe_for(0) and not det.probe_for(10)
    a.bind()
    a.bind()
    assert not det.probe_for(0)  # full
