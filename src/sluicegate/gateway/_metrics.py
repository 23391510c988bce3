"""Prometheus metrics, named like the upstream flow-control dashboards expect.

Per-request figures (outcome counts, tokens, queue and added-latency histograms) are
recorded as requests finish, through cached label children. Everything that is state
(queue sizes, pool saturation, stale backends, in flight per backend, each band's
Jain's index and service gap) is read from the controllers and detectors only when
/metrics is scraped, so it costs the data path nothing. Fairness ids get their own
label value up to `max_fairness_ids`; later ids are reported as ``other``, so a client
cannot blow up the series count.

A scrape costs O(bands x labelled ids), never O(flows): the per-fairness-id queue gauges
look up the labelled ids' flows by key, and ``other`` is the band's exact total minus
them. With 100,000 tenants a scrape must not walk 100,000 flows.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING, Final, final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ._adaptive import AdaptiveDetector

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

    import sluicegate as sg

    from ._config import MetricsSettings
    from ._pool import Pool
    from ._queue_events import QueueEvents

__all__ = ["OTHER_FAIRNESS_ID", "FastHistogram", "GatewayMetrics"]

OTHER_FAIRNESS_ID: Final = "other"
_QUEUE_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
_CYCLE_BUCKETS: Final = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip
_ADDED_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


@final
class FastHistogram:
    """A histogram observed on the request path: one bucket search and two additions.

    prometheus_client's takes a lock per bucket and per sum (about 2 us an observation,
    measured); the gateway observes and is scraped on one thread, its event loop, so
    no lock is needed. `_RequestCollector` exposes it in the usual histogram format.
    """

    __slots__ = ("_les", "bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # ``le`` as prometheus_client writes it (``1.0``, ``0.0001``, ``+Inf``).
        self._les = [repr(float(b)) for b in bounds] + ["+Inf"]
        #: Observations per bucket (not cumulative); the last one is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound (``le``), as the exposition wants them."""
        out, total = [], 0
        for le, count in zip(self._les, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


@final
class GatewayMetrics:
    """The gateway's metrics, in their own `CollectorRegistry`.

    The per-request series (outcomes, queue time, tokens, dispatch cycle, added
    latency) are plain counters and `FastHistogram` objects read at scrape time;
    upstream errors (rare) use prometheus_client directly.

    Args:
        settings: prefix and fairness-id cardinality cap.
        pools: returns the live pools, read at each scrape.
    """

    def __init__(self, settings: MetricsSettings, pools: Callable[[], Iterable[Pool]]) -> None:
        prefix = self._prefix = settings.prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._cap = settings.max_fairness_ids
        self._ids: set[str] = set()
        #: (fairness id, priority, outcome) -> (queue histogram, outcome counter cell).
        self._children: dict[tuple[str, int, sg.Outcome], tuple[FastHistogram, list[int]]] = {}
        self._token_children: dict[tuple[str, int], list[int]] = {}
        #: Series by label values, as exposed (ids past the cap share ``other``'s).
        self.queue_series: dict[tuple[str, str, str], FastHistogram] = {}
        self.request_series: dict[tuple[str, str], list[int]] = {}
        self.token_series: dict[tuple[str, str], list[int]] = {}
        #: Duration of dispatch passes run on release.
        self.dispatch_cycle = FastHistogram(_CYCLE_BUCKETS)
        #: Time to the first response byte, minus queueing and upstream time.
        self.added_latency = FastHistogram(_ADDED_BUCKETS)
        self._upstream_errors = Counter(
            f"{prefix}upstream_errors",
            "Upstream failures by backend and kind: connect, timeout, status_5xx, broken "
            "(reset or malformed answer, also mid-response).",
            ["pool", "backend", "kind"],
            registry=self.registry,
        )
        self.registry.register(_RequestCollector(prefix, self))
        self.registry.register(_StateCollector(prefix, pools, lambda: self._ids))

    def watch_queue_events(self, events: QueueEvents) -> None:
        """Expose `events` (`x-sluicegate-queue-events`): comments sent, streams waiting."""
        self.registry.register(_QueueEventsCollector(self._prefix, events))

    def fairness_label(self, fairness_id: str) -> str:
        """The label value for `fairness_id`, folding ids beyond the cap into ``other``."""
        ids = self._ids
        if fairness_id in ids:
            return fairness_id
        if len(ids) < self._cap:
            ids.add(fairness_id)
            return fairness_id
        return OTHER_FAIRNESS_ID

    def record(self, fairness_id: str, priority: int, outcome: sg.Outcome, queue_s: float) -> None:
        """Count one flow-control outcome and observe its queue time."""
        key = (fairness_id, priority, outcome)
        children = self._children.get(key)
        if children is None:
            label = self.fairness_label(fairness_id)
            prio = str(priority)
            hist = self.queue_series.get((label, prio, outcome.value))
            if hist is None:
                hist = self.queue_series[label, prio, outcome.value] = FastHistogram(_QUEUE_BUCKETS)
            cell = self.request_series.setdefault((outcome.value, prio), [0])
            children = (hist, cell)
            # Cache only bounded keys: ids past the cap share the 'other' children.
            if label == fairness_id:
                self._children[key] = children
        children[0].observe(queue_s)
        children[1][0] += 1

    def tokens(self, fairness_id: str, priority: int, ticket: sg.Ticket) -> None:
        """Count a finished request's tokens (what its ticket was finally charged)."""
        key = (fairness_id, priority)
        cells = self._token_children.get(key)
        if cells is None:
            label = self.fairness_label(fairness_id)
            cells = self.token_series.setdefault((label, str(priority)), [0, 0])
            if label == fairness_id:
                self._token_children[key] = cells
        cells[0] += ticket.input_tokens
        cells[1] += ticket.output_tokens

    def upstream_error(self, pool: str, backend: str, kind: str) -> None:
        """Count one upstream failure (labels are bounded: configured backends x kinds)."""
        self._upstream_errors.labels(pool, backend, kind).inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


@final
class _RequestCollector(Collector):
    """The per-request series of `GatewayMetrics`, read at scrape time."""

    def __init__(self, prefix: str, metrics: GatewayMetrics) -> None:
        self._prefix = prefix
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        p, m = self._prefix, self._metrics
        queue = HistogramMetricFamily(
            f"{p}request_queue_duration_seconds",
            "Time from arrival to the flow-control outcome.",
            labels=["fairness_id", "priority", "outcome"],
        )
        for labels, hist in m.queue_series.items():
            queue.add_metric(list(labels), hist.buckets(), hist.sum)
        requests = CounterMetricFamily(
            f"{p}requests", "Requests by flow-control outcome.", labels=["outcome", "priority"]
        )
        for pair, cell in m.request_series.items():
            requests.add_metric(list(pair), cell[0])
        tokens = CounterMetricFamily(
            f"{p}flow_tokens",
            "Tokens served per flow (actual usage when the backend reported it, else the "
            "gateway's count or estimate), counted when each request ends.",
            labels=["fairness_id", "priority", "kind"],
        )
        for (label, prio), cells in m.token_series.items():
            tokens.add_metric([label, prio, "input"], cells[0])
            tokens.add_metric([label, prio, "output"], cells[1])
        cycle = HistogramMetricFamily(
            f"{p}dispatch_cycle_duration_seconds",
            "Duration of dispatch passes run on release (release plus the dispatches it allows).",
        )
        cycle.add_metric([], m.dispatch_cycle.buckets(), m.dispatch_cycle.sum)
        added = HistogramMetricFamily(
            f"{p}gateway_added_latency_seconds",
            "Time to the first response byte, minus queueing and upstream time.",
        )
        added.add_metric([], m.added_latency.buckets(), m.added_latency.sum)
        yield from (queue, requests, tokens, cycle, added)


@final
class _QueueEventsCollector(Collector):
    """Queue events at scrape time: plain counters the writer bumps, read here."""

    def __init__(self, prefix: str, events: QueueEvents) -> None:
        self._prefix = prefix
        self._events = events

    def collect(self) -> Iterator[Metric]:
        comments = CounterMetricFamily(
            f"{self._prefix}queue_event_comments",
            "SSE comments sent to waiting streamed requests (x-sluicegate-queue-events).",
        )
        comments.add_metric([], self._events.comments)
        waiting = GaugeMetricFamily(
            f"{self._prefix}queue_event_streams",
            "Streamed requests waiting in flow control with queue events on.",
        )
        waiting.add_metric([], len(self._events))
        yield comments
        yield waiting


@final
class _StateCollector(Collector):
    """Gauges computed from the live controllers and detectors at scrape time."""

    def __init__(
        self,
        prefix: str,
        pools: Callable[[], Iterable[Pool]],
        labelled: Callable[[], Collection[str]],
    ) -> None:
        self._prefix = prefix
        self._pools = pools
        self._labelled = labelled

    def collect(self) -> Iterator[Metric]:
        p = self._prefix
        size = GaugeMetricFamily(
            f"{p}queue_size",
            "Requests waiting in flow control.",
            labels=["fairness_id", "priority"],
        )
        nbytes = GaugeMetricFamily(
            f"{p}queue_bytes", "Bytes waiting in flow control.", labels=["fairness_id", "priority"]
        )
        saturation = GaugeMetricFamily(
            f"{p}pool_saturation",
            "Lowest backend score of the pool (>= 1: saturated).",
            labels=["pool"],
        )
        stale = GaugeMetricFamily(
            f"{p}stale_backends",
            "Backends whose metrics are older than staleness.",
            labels=["pool"],
        )
        in_flight = GaugeMetricFamily(
            f"{p}backend_in_flight", "Requests in flight per backend.", labels=["pool", "backend"]
        )
        healthy = GaugeMetricFamily(
            f"{p}backend_healthy",
            "1 while the backend may get traffic; 0 while passive health holds it out of "
            "service (until its health probe passes) or its scrapes cannot connect.",
            labels=["pool", "backend"],
        )
        jain = GaugeMetricFamily(
            f"{p}fairness_jain_index",
            "Jain's index of normalised token service over the fairness window among the "
            "band's backlogged flows (1 = equal); absent with fewer than two such flows.",
            labels=["pool", "priority"],
        )
        gap = GaugeMetricFamily(
            f"{p}fairness_max_service_gap",
            "Largest difference of normalised token service (weighted tokens / flow "
            "weight) over the fairness window between the band's backlogged flows.",
            labels=["pool", "priority"],
        )
        sizes: defaultdict[tuple[str, str], int] = defaultdict(int)
        byte_sizes: defaultdict[tuple[str, str], int] = defaultdict(int)
        for pool in self._pools():
            stats = pool.controller.summary(0)
            for band in stats.bands.values():
                self._queues(pool, band, sizes, byte_sizes)
                band_labels = [pool.name, str(band.priority)]
                if band.jain_index is not None:
                    jain.add_metric(band_labels, band.jain_index)
                if band.max_service_gap is not None:
                    gap.add_metric(band_labels, band.max_service_gap)
            detector = pool.detector
            saturation.add_metric([pool.name], detector.pool_saturation())
            stale.add_metric([pool.name], detector.stale_backends())
            for backend in detector.backends.values():
                in_flight.add_metric([pool.name, backend.url], backend.in_flight)
                healthy.add_metric([pool.name, backend.url], float(backend.usable))
        for labels, value in sizes.items():
            size.add_metric(list(labels), value)
        for labels, value in byte_sizes.items():
            nbytes.add_metric(list(labels), value)
        yield from (size, nbytes, saturation, stale, in_flight, healthy, jain, gap)
        yield self._learned_limits()
        yield self._requeues()
        yield from self._pauses()
        yield from self._reservations()

    def _reservations(self) -> Iterator[Metric]:
        """Places promised with Retry-After by full bands, by what became of them."""
        counts = CounterMetricFamily(
            f"{self._prefix}retry_reservations",
            "Places a full band promised with its 429 (Retry-After) to the refused flow, "
            "by event: made, honoured (the flow came back in its window), lapsed (it did "
            "not), refused (nothing could be promised: the band or the table was full).",
            labels=["pool", "event"],
        )
        outstanding = GaugeMetricFamily(
            f"{self._prefix}retry_reservations_outstanding",
            "Places promised with Retry-After and not yet honoured or lapsed.",
            labels=["pool"],
        )
        for pool in self._pools():
            figures = pool.controller.retry_reservations()
            for event in ("made", "honoured", "lapsed", "refused"):
                counts.add_metric([pool.name, event], figures[event])
            outstanding.add_metric([pool.name], figures["outstanding"])
        yield counts
        yield outstanding

    def _queues(
        self,
        pool: Pool,
        band: sg.BandStatistics,
        sizes: defaultdict[tuple[str, str], int],
        byte_sizes: defaultdict[tuple[str, str], int],
    ) -> None:
        """Add one band's queue gauges: labelled ids by lookup, the rest as ``other``."""
        priority = str(band.priority)
        rest_requests, rest_bytes = band.queued_requests, band.queued_bytes
        found = 0
        for fairness_id in self._labelled():
            flow = pool.controller.flow_statistics(band.priority, fairness_id)
            if flow is not None:
                found += 1
                sizes[fairness_id, priority] += flow.queued_requests
                byte_sizes[fairness_id, priority] += flow.queued_bytes
                rest_requests -= flow.queued_requests
                rest_bytes -= flow.queued_bytes
        if band.flows > found:  # flows without a label of their own
            sizes[OTHER_FAIRNESS_ID, priority] += rest_requests
            byte_sizes[OTHER_FAIRNESS_ID, priority] += rest_bytes

    def _requeues(self) -> Metric:
        """Requests taken back before their answer started and queued again (per pool)."""
        requeued = CounterMetricFamily(
            f"{self._prefix}requests_requeued",
            "Requests taken back from a backend before their answer started, to make "
            "room for higher-priority work, and queued again.",
            labels=["pool"],
        )
        for pool in self._pools():
            requeued.add_metric([pool.name], pool.preemption.requeued)
        return requeued

    def _pauses(self) -> Iterator[Metric]:
        """Running requests paused for higher-priority work, resumed, and evicted (per
        pool and the request's priority)."""
        paused = CounterMetricFamily(
            f"{self._prefix}requests_paused",
            "Running requests paused (their upstream request closed, their client's "
            "stream kept open) to make room for higher-priority work.",
            labels=["pool", "priority"],
        )
        resumed = CounterMetricFamily(
            f"{self._prefix}requests_resumed",
            "Paused requests dispatched again, continuing where they stopped.",
            labels=["pool", "priority"],
        )
        evicted = CounterMetricFamily(
            f"{self._prefix}requests_evicted",
            "Running streams ended with an SSE error event (opt-in `evict_streams`) to "
            "make room for higher-priority work, by the evicted request's priority.",
            labels=["pool", "priority"],
        )
        for pool in self._pools():
            preemption = pool.preemption
            for priority, count in preemption.pauses.items():
                paused.add_metric([pool.name, str(priority)], count)
            for priority, count in preemption.resumes.items():
                resumed.add_metric([pool.name, str(priority)], count)
            for priority, count in preemption.evictions.items():
                evicted.add_metric([pool.name, str(priority)], count)
        yield paused
        yield resumed
        yield evicted

    def _learned_limits(self) -> Metric:
        """The concurrency limit each backend of an adaptive pool has now."""
        limits = GaugeMetricFamily(
            f"{self._prefix}backend_concurrency_limit",
            "Requests a backend of an adaptive pool may hold in flight, as learned.",
            labels=["pool", "backend"],
        )
        for pool in self._pools():
            detector = pool.detector
            if isinstance(detector, AdaptiveDetector):
                for backend in detector.backends.values():
                    value = detector.limit_of(backend)
                    if value is not None:
                        limits.add_metric([pool.name, backend.url], value)
        return limits
