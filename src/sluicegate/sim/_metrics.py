"""vLLM-named Prometheus metrics for one simulator instance.

The engine records into plain accumulators (`Histogram`, `EngineCounters`): one
`bisect` and two additions per observation. prometheus_client's own `Histogram` takes a
lock per observation, which at 20k tokens/s would cost several percent of a core.
A custom collector, registered in a per-app `CollectorRegistry` (never the global one,
so several instances can live in one process), turns the accumulators and the engine's
live state into metric families at scrape time, so the gauges always agree with the
engine.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from prometheus_client.metrics_core import Metric

    from ._engine import SimEngine

__all__ = [
    "CONTENT_TYPE",
    "E2E_BUCKETS",
    "ITL_BUCKETS",
    "LAG_BUCKETS",
    "TTFT_BUCKETS",
    "EngineCounters",
    "Histogram",
    "render_metrics",
]

#: The classic text format; every Prometheus version and our own scraper read it.
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"

# Bucket bounds as vLLM declares them (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS: Final = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

#: Lateness of token emission against the engine's schedule (simulator health).
LAG_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Histogram:
    """A cumulative-on-read histogram: `observe` is one bisect and three additions."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation (seconds)."""
        # bisect_left puts a value equal to a bound into that bound's bucket (le is <=).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Return `(le, cumulative count)` pairs ending with `+Inf`, as Prometheus wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


@dataclasses.dataclass(slots=True)
class EngineCounters:
    """Monotonic counts and latency histograms the engine updates as it runs."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    aborted: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    #: Prompt tokens of continuations (`continue_final_message`) that the prefix cache
    #: did not cover: the prefill a pause and resume cost.
    continued_prefill_tokens: int = 0
    success: dict[str, int] = dataclasses.field(default_factory=dict)
    ttft: Histogram = dataclasses.field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = dataclasses.field(default_factory=lambda: Histogram(ITL_BUCKETS))
    queue_time: Histogram = dataclasses.field(default_factory=lambda: Histogram(E2E_BUCKETS))
    e2e: Histogram = dataclasses.field(default_factory=lambda: Histogram(E2E_BUCKETS))
    lag: Histogram = dataclasses.field(default_factory=lambda: Histogram(LAG_BUCKETS))


class _EngineCollector(Collector):
    """Reads one engine at scrape time."""

    def __init__(self, engine: SimEngine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self._engine.statistics()
        counters = self._engine.counters
        label = [self._model]
        gauges = (
            ("vllm:num_requests_running", "Requests in the running batch.", stats.running),
            ("vllm:num_requests_waiting", "Requests waiting in the engine.", stats.waiting),
            ("vllm:kv_cache_usage_perc", "KV cache usage, 0..1.", stats.kv_cache_usage),
            ("vllm:gpu_cache_usage_perc", "Deprecated alias of kv_cache_usage_perc.",
             stats.kv_cache_usage),
        )  # fmt: skip
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(label, float(value))
            yield gauge
        totals = (
            ("vllm:prompt_tokens", "Prefilled prompt tokens.", counters.prompt_tokens),
            ("vllm:generation_tokens", "Generated tokens.", counters.generation_tokens),
            ("vllm:num_preemptions", "Preempted requests.", counters.preemptions),
            ("vllm:prefix_cache_queries", "Prefix cache queries, in queried tokens.",
             counters.prefix_cache_queries),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in cached tokens.",
             counters.prefix_cache_hits),
        )  # fmt: skip
        for name, doc, value in totals:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(label, float(value))
            yield counter
        success = CounterMetricFamily(
            "vllm:request_success",
            "Finished requests by finish reason.",
            labels=["model_name", "finished_reason"],
        )
        for reason in sorted({"stop", "length", *counters.success}):
            success.add_metric([self._model, reason], float(counters.success.get(reason, 0)))
        yield success
        histograms = (
            ("vllm:time_to_first_token_seconds", "Time to first token.", counters.ttft),
            ("vllm:inter_token_latency_seconds", "Time between tokens.", counters.itl),
            ("vllm:request_queue_time_seconds", "Time waiting in the engine.",
             counters.queue_time),
            ("vllm:e2e_request_latency_seconds", "End-to-end latency.", counters.e2e),
            ("sluicegate_sim_schedule_lag_seconds",
             "How late the simulator emits due tokens (its own health, not vLLM's).",
             counters.lag),
        )  # fmt: skip
        for name, doc, hist in histograms:
            family = HistogramMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, hist.cumulative(), sum_value=hist.sum)
            yield family


def make_registry(engine: SimEngine, model_name: str) -> CollectorRegistry:
    """Return a fresh registry exposing `engine` under `model_name`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine, model_name))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """Render `registry` in the Prometheus text format."""
    return generate_latest(registry)
