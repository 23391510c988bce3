"""Per-pool saturation detectors with late binding to the least-loaded backend.

Both detectors follow the `sluicegate.SaturationDetector` protocol. They answer from
cached state only (the last scrape, the gateway's own in-flight counts), so
`is_saturated` costs one pass over the pool's backends. `is_saturated` remembers the
best backend it saw; `on_dispatch`, which the controller calls right after, binds the
ticket to it (`ticket.assignment`), so a request is bound to a backend only when it is
dispatched.

Utilization scoring (per backend)::

    score = max((waiting + unseen) / queue_depth_threshold, kv / kv_cache_threshold)

where ``unseen`` counts the requests this gateway dispatched to the backend that are
still in flight and were sent after the last completed scrape had started: the backend's
metrics cannot show them yet, so a burst between two scrapes cannot overshoot. The
pool is saturated when no reachable backend scores below 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sluicegate import Ticket

    from ._config import ConcurrencySettings, UtilizationSettings

__all__ = ["Backend", "BackendMetrics", "ConcurrencyDetector", "UtilizationDetector"]


@final
class BackendMetrics:
    """The figures one scrape yields."""

    __slots__ = ("kv", "running", "waiting")

    def __init__(self, waiting: float, running: float, kv: float) -> None:
        self.waiting = waiting
        self.running = running
        self.kv = kv


@final
class Backend:
    """One model server of a pool, as the gateway sees it."""

    __slots__ = (
        "_epochs",
        "epoch",
        "failures",
        "in_flight",
        "last_error",
        "metrics",
        "reachable",
        "scraped_at",
        "scrapes",
        "unseen",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.metrics: BackendMetrics | None = None
        #: Loop time of the last successful scrape.
        self.scraped_at: float | None = None
        #: False after a refused connection, until a scrape succeeds again.
        self.reachable = True
        self.in_flight = 0
        #: In-flight requests the last completed scrape cannot have seen.
        self.unseen = 0
        #: Incremented when a scrape starts; a dispatch is tagged with it.
        self.epoch = 0
        self._epochs: dict[int, int] = {}
        self.scrapes = 0
        self.failures = 0
        self.last_error: str | None = None

    def bind(self) -> int:
        """Count one more dispatched request; returns its epoch tag."""
        self.in_flight += 1
        self.unseen += 1
        epoch = self.epoch
        self._epochs[epoch] = self._epochs.get(epoch, 0) + 1
        return epoch

    def unbind(self, epoch: int) -> None:
        """Its request finished; it no longer counts."""
        self.in_flight -= 1
        count = self._epochs.get(epoch)
        if count is not None:
            self.unseen -= 1
            if count > 1:
                self._epochs[epoch] = count - 1
            else:
                del self._epochs[epoch]

    def seen_up_to(self, epoch: int) -> None:
        """A scrape started at `epoch` completed: requests tagged up to it are visible."""
        for tag in [t for t in self._epochs if t <= epoch]:
            self.unseen -= self._epochs.pop(tag)

    def __repr__(self) -> str:
        return f"<Backend {self.url} in flight={self.in_flight} unseen={self.unseen}>"


class _PoolDetector:
    """Backend bookkeeping shared by both detectors."""

    recheck_interval: float | None = None

    def __init__(self, urls: Iterable[str], clock: Callable[[], float]) -> None:
        self.backends: dict[str, Backend] = {u: Backend(u) for u in urls}
        self._clock = clock
        self._listener: Callable[[], None] | None = None
        self._best: Backend | None = None

    def score(self, backend: Backend, now: float) -> float:
        raise NotImplementedError

    def notify(self) -> None:
        """Tell the controller the answer may have changed."""
        if self._listener is not None:
            self._listener()

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        self._listener = listener

    def set_backends(self, urls: Iterable[str]) -> tuple[list[Backend], list[Backend]]:
        """Adopt a new backend list; known URLs keep their state. Returns (added, removed).

        Requests in flight to a removed backend finish there; their tickets keep it.
        """
        wanted = list(urls)
        old = self.backends
        self.backends = {u: old.get(u) or Backend(u) for u in wanted}
        added = [b for u, b in self.backends.items() if u not in old]
        removed = [b for u, b in old.items() if u not in self.backends]
        self.notify()
        return added, removed

    def _pick(self) -> Backend | None:
        """The reachable backend with the lowest score below 1 (fewest in flight on ties)."""
        now = self._clock()
        best: Backend | None = None
        best_score = 1.0
        for backend in self.backends.values():
            if not backend.reachable:
                continue
            score = self.score(backend, now)
            if score < best_score or (
                score == best_score and best is not None and backend.in_flight < best.in_flight
            ):
                best, best_score = backend, score
        return best

    def is_saturated(self) -> bool:
        self._best = best = self._pick()
        return best is None

    def has_endpoints(self) -> bool:
        return any(b.reachable for b in self.backends.values())

    def utilization(self) -> float:
        """The best backend's score: the load the next dispatch would meet."""
        return self.pool_saturation()

    def on_dispatch(self, ticket: Ticket, /) -> None:
        backend = self._best if self._best is not None else self._pick()
        self._best = None
        if backend is None:  # only if dispatched without asking is_saturated first
            backend = min(self.backends.values(), key=lambda b: b.in_flight, default=None)
            if backend is None:
                return
        ticket.assignment = (backend, backend.bind())

    def on_release(self, ticket: Ticket, /) -> None:
        assignment: Any = ticket.assignment
        if assignment is not None:
            backend, epoch = assignment
            backend.unbind(epoch)

    def least_loaded(self) -> Backend | None:
        """A reachable backend for traffic outside flow control (fewest in flight)."""
        candidates = [b for b in self.backends.values() if b.reachable]
        return min(candidates, key=lambda b: b.in_flight, default=None)

    def pool_saturation(self) -> float:
        """The lowest backend score (1.0 when none is usable): what gates dispatch."""
        now = self._clock()
        lowest = min(
            (self.score(b, now) for b in self.backends.values() if b.reachable), default=1.0
        )
        return lowest if math.isfinite(lowest) else 1.0

    def stale_backends(self) -> int:
        return 0

    def backend_slots(self, backend: Backend) -> float:
        """How many requests `backend` holds at a score of 1 (its capacity)."""
        raise NotImplementedError

    def slots(self) -> tuple[float, float]:
        """(free, capacity) over the reachable backends: what demand headroom sizes from."""
        now = self._clock()
        free = capacity = 0.0
        for backend in self.backends.values():
            if not backend.reachable:
                continue
            size = self.backend_slots(backend)
            score = self.score(backend, now)
            capacity += size
            if math.isfinite(score) and score < 1.0:
                free += math.floor((1.0 - score) * size + 1e-9)
        return free, capacity

    def describe(self, backend: Backend) -> dict[str, Any]:
        """A JSON-able view of one backend for /debug/flowcontrol."""
        now = self._clock()
        score = self.score(backend, now)
        m = backend.metrics
        return {
            "url": backend.url,
            "reachable": backend.reachable,
            "score": score if math.isfinite(score) else "inf",
            "in_flight": backend.in_flight,
            "unseen_dispatches": backend.unseen,
            "waiting": None if m is None else m.waiting,
            "running": None if m is None else m.running,
            "kv_cache_usage": None if m is None else m.kv,
            "metrics_age_s": None if backend.scraped_at is None else now - backend.scraped_at,
            "scrapes": backend.scrapes,
            "scrape_failures": backend.failures,
            "last_error": backend.last_error,
        }


@final
class UtilizationDetector(_PoolDetector):
    """Saturation from scraped queue depth and KV-cache usage (see the module docstring).

    Args:
        urls: the pool's backends.
        settings: thresholds, staleness and the stale policy.
        clock: the loop clock (``loop.time``).
    """

    def __init__(
        self, urls: Iterable[str], settings: UtilizationSettings, clock: Callable[[], float]
    ) -> None:
        super().__init__(urls, clock)
        self.settings = settings
        #: Batch size per backend URL, learned from scrapes that showed a queue.
        self.batch_sizes: dict[str, float] = {}

    def configure(self, settings: UtilizationSettings) -> None:
        """Adopt new thresholds or policy; waiting requests are re-checked at once."""
        self.settings = settings
        self.notify()

    def is_stale(self, backend: Backend, now: float) -> bool:
        at = backend.scraped_at
        return at is None or now - at > self.settings.staleness

    def score(self, backend: Backend, now: float) -> float:
        s = self.settings
        m = backend.metrics
        if m is None or self.is_stale(backend, now):
            if s.stale_policy == "fail-open":
                return 0.0
            if s.stale_policy == "fail-closed" or m is None:
                return math.inf
        assert m is not None
        return max(
            (m.waiting + backend.unseen) / s.queue_depth_threshold, m.kv / s.kv_cache_threshold
        )

    def backend_slots(self, backend: Backend) -> float:
        # A score of 1 is `queue_depth_threshold` requests waiting in the engine.
        return self.settings.queue_depth_threshold

    def slots(self) -> tuple[float, float]:
        """(free, capacity) in batch slots once each engine's batch size is known.

        An engine's batch is full when it queues: the number running at a scrape that
        showed requests waiting is its batch size (``max_num_seqs``, or fewer when the
        KV cache is the limit). Free slots are those no request of ours may be about to
        take (running, waiting and unseen dispatches count). Until an engine has queued
        once, its free share of the queue-depth threshold stands in.
        """
        now = self._clock()
        free = capacity = 0.0
        for backend in self.backends.values():
            if not backend.reachable:
                continue
            batch = self.batch_sizes.get(backend.url)
            m = backend.metrics
            if batch is None or m is None or self.is_stale(backend, now):
                size = self.backend_slots(backend)
                score = self.score(backend, now)
                capacity += size
                if math.isfinite(score) and score < 1.0:
                    free += math.floor((1.0 - score) * size + 1e-9)
                continue
            capacity += batch
            free += max(0.0, batch - m.running - m.waiting - backend.unseen)
        return free, capacity

    def scrape_started(self, backend: Backend) -> int:
        """Called as a scrape request is sent; returns the epoch to report back."""
        epoch = backend.epoch
        backend.epoch += 1
        return epoch

    def scrape_succeeded(self, backend: Backend, metrics: BackendMetrics, epoch: int) -> None:
        backend.metrics = metrics
        backend.scraped_at = self._clock()
        backend.reachable = True
        backend.scrapes += 1
        backend.last_error = None
        backend.seen_up_to(epoch)
        if metrics.waiting > 0 and metrics.running > 0:
            self.batch_sizes[backend.url] = metrics.running
        self.notify()

    def scrape_failed(self, backend: Backend, error: str, *, reachable: bool) -> None:
        backend.failures += 1
        backend.last_error = error
        backend.reachable = reachable
        self.notify()

    def stale_backends(self) -> int:
        now = self._clock()
        return sum(1 for b in self.backends.values() if self.is_stale(b, now))

    def __repr__(self) -> str:
        return f"UtilizationDetector({len(self.backends)} backends, {self.settings.stale_policy})"


@final
class ConcurrencyDetector(_PoolDetector):
    """At most `max_in_flight` requests in flight per backend, counted by the gateway.

    Args:
        urls: the pool's backends.
        settings: the per-backend limit.
        clock: the loop clock (``loop.time``).
    """

    def __init__(
        self, urls: Iterable[str], settings: ConcurrencySettings, clock: Callable[[], float]
    ) -> None:
        super().__init__(urls, clock)
        self.settings = settings

    def configure(self, settings: ConcurrencySettings) -> None:
        """Adopt a new limit; waiting requests are dispatched at once if it grew."""
        self.settings = settings
        self.notify()

    def score(self, backend: Backend, now: float) -> float:
        return backend.in_flight / self.settings.max_in_flight

    def backend_slots(self, backend: Backend) -> float:
        return self.settings.max_in_flight

    def __repr__(self) -> str:
        return f"ConcurrencyDetector({len(self.backends)} backends, {self.settings.max_in_flight})"
