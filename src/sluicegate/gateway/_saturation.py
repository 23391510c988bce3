"""Per-pool saturation detectors with late binding to the least-loaded backend.

Both detectors follow the `sluicegate.SaturationDetector` protocol. They answer from
cached state only (the last scrape, the gateway's own in-flight counts), so
`is_saturated` costs one pass over the pool's backends. `is_saturated` remembers the
best backend it saw; `on_dispatch`, which the controller calls right after, binds the
ticket to it (`ticket.assignment`, a `Binding`), so a request is bound to a backend only when it is
dispatched.

Utilization scoring (per backend)::

    score = max((waiting + unseen) / queue_depth_threshold, kv / kv_cache_threshold)

where ``unseen`` counts the requests this gateway dispatched to the backend that are
still in flight and were sent after the last completed scrape had started: the backend's
metrics cannot show them yet, so a burst between two scrapes cannot overshoot. The
pool is saturated when no usable backend scores below 1.

Passive health (every detector, in the shared base): a backend is *usable* while it is
reachable (its scrapes connect, for utilization pools) and healthy. The gateway reports
each upstream attempt's result; a failed connect takes the backend out at once, resets
and 5xx answers after `HealthSettings.failure_threshold` in a row. The pool's
`HealthProbes` then probes that backend's ``/health`` on a backoff timer, and only a
pass puts it back: healthy backends are never probed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, final

from ._config import HealthSettings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sluicegate import Ticket

    from ._config import ConcurrencySettings, UtilizationSettings

#: What went wrong with one upstream attempt (see `_PoolDetector.upstream_failed`).
FailureKind = Literal["connect", "reset", "status"]

_log = logging.getLogger("sluicegate.gateway")

__all__ = [
    "Backend",
    "BackendMetrics",
    "Binding",
    "ConcurrencyDetector",
    "UtilizationDetector",
    "binding_of",
]


@final
class BackendMetrics:
    """The figures one scrape yields."""

    __slots__ = ("kv", "running", "waiting")

    def __init__(self, waiting: float, running: float, kv: float) -> None:
        self.waiting = waiting
        self.running = running
        self.kv = kv


@final
@dataclass(frozen=True, slots=True)
class Binding:
    """A dispatched request's place on a backend: what a detector stores in
    ``ticket.assignment``.

    Attributes:
        backend: the backend the request was bound to.
        epoch: the scrape epoch at binding; the request counts as unseen by the
            backend's metrics until a scrape started after it completes.
    """

    backend: Backend
    epoch: int

    def release(self) -> None:
        """The request finished (or moved): the backend no longer counts it."""
        self.backend.unbind(self.epoch)


def binding_of(ticket: Ticket) -> Binding | None:
    """The binding a gateway detector stored on `ticket`, or None (not dispatched, or
    its detector bound nothing). The core keeps ``assignment`` untyped: the core cannot
    know the gateway's backends."""
    assignment: object = ticket.assignment
    return assignment if isinstance(assignment, Binding) else None


@final
class Backend:
    """One model server of a pool, as the gateway sees it."""

    __slots__ = (
        "_epochs",
        "backoff",
        "epoch",
        "failures",
        "health_error",
        "healthy",
        "in_flight",
        "last_error",
        "metrics",
        "probe_at",
        "reachable",
        "scraped_at",
        "scrapes",
        "strikes",
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
        #: False from a failed connect or a burst of failures until a health probe passes.
        self.healthy = True
        #: Consecutive failed upstream attempts (resets and 5xx).
        self.strikes = 0
        #: Why it was taken out of service (no URL: it may reach /readyz).
        self.health_error: str | None = None
        #: Seconds before the next health probe, doubled by each failed one.
        self.backoff = 0.0
        #: Loop time of the next health probe while out of service.
        self.probe_at: float | None = None

    @property
    def usable(self) -> bool:
        """Reachable and healthy: it may get traffic."""
        return self.reachable and self.healthy

    def bind(self) -> Binding:
        """Count one more dispatched request; returns its binding (epoch-tagged)."""
        self.in_flight += 1
        self.unseen += 1
        epoch = self.epoch
        self._epochs[epoch] = self._epochs.get(epoch, 0) + 1
        return Binding(self, epoch)

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
    """Backend bookkeeping shared by every detector: binding and passive health.

    A subclass supplies `score`; it may override `stale_backends`.
    """

    recheck_interval: float | None = None

    def __init__(self, urls: Iterable[str], clock: Callable[[], float]) -> None:
        self.backends: dict[str, Backend] = {u: Backend(u) for u in urls}
        self.health = HealthSettings()
        self._clock = clock
        self._listener: Callable[[], None] | None = None
        self._prober: Callable[[Backend, float], None] | None = None
        self._best: Backend | None = None
        #: Told of each slot a release frees (`SlotLoans.freed`: a paused request's own).
        self.on_freed: Callable[[Backend], None] | None = None

    def score(self, backend: Backend, now: float) -> float:
        raise NotImplementedError

    def has_room(self, backend: Backend) -> bool:
        """Whether `backend` takes one more request now."""
        return backend.usable and self.score(backend, self._clock()) < 1.0

    def notify(self) -> None:
        """Tell the controller the answer may have changed."""
        if self._listener is not None:
            self._listener()

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        self._listener = listener

    def set_prober(self, prober: Callable[[Backend, float], None] | None, /) -> None:
        """Install what schedules a health probe of a backend in so many seconds."""
        self._prober = prober

    # -- passive health -----------------------------------------------------------------

    def upstream_succeeded(self, backend: Backend) -> None:
        """An attempt got an answer (any status below 500): the failure run ends."""
        backend.strikes = 0

    def upstream_failed(self, backend: Backend, kind: FailureKind, error: str) -> None:
        """An attempt failed: a connect at once, resets and 5xx in a run, take it out."""
        backend.strikes += 1
        if backend.healthy and (
            kind == "connect" or backend.strikes >= self.health.failure_threshold
        ):
            backend.backoff = 0.0
            self._take_out(backend, f"{kind} failure: {error}")

    def probe_failed(self, backend: Backend, error: str) -> None:
        """Its health probe failed: try again after twice the wait."""
        if backend.url in self.backends:
            self._take_out(backend, f"health probe failed: {error}")

    def probe_succeeded(self, backend: Backend) -> None:
        """Its health probe passed: it gets traffic again."""
        backend.healthy = True
        backend.strikes = 0
        backend.backoff = 0.0
        backend.health_error = None
        backend.probe_at = None
        self.notify()

    def probe_soon(self, backend: Backend) -> None:
        """Probe an out-of-service backend at once (there is news that it is back)."""
        backend.backoff = 0.0
        backend.probe_at = self._clock()
        if self._prober is not None:
            self._prober(backend, 0.0)

    def _take_out(self, backend: Backend, reason: str) -> None:
        health = self.health
        if backend.healthy:
            _log.warning("backend=%s out of service after a %s", backend.url, reason)
        backend.healthy = False
        backend.health_error = reason
        backend.backoff = min(
            max(backend.backoff * 2, health.probe_backoff), health.max_probe_backoff
        )
        backend.probe_at = self._clock() + backend.backoff
        if self._prober is not None:
            self._prober(backend, backend.backoff)
        self.notify()

    def rebind(self, ticket: Ticket, /) -> Backend | None:
        """Move a dispatched request to another usable backend (its connect failed).

        The best-scoring other backend is chosen even if it is full: the request was
        already admitted, so that backend may run over its limit by the requests that
        were connecting to the failed one. Returns None (nothing changes) without one.
        """
        binding = binding_of(ticket)
        if binding is None:
            return None
        now = self._clock()
        others = [b for b in self.backends.values() if b.usable and b is not binding.backend]
        if not others:
            return None
        target = min(others, key=lambda b: (self.score(b, now), b.in_flight))
        binding.release()
        ticket.assignment = target.bind()
        return target

    def move_to(self, ticket: Ticket, url: str, /) -> bool:
        """Move a request just dispatched to the backend `url`, if that one is usable and
        has room: a resumed request goes back to the engine whose prefix cache holds
        what it had. The backend it leaves has a slot free again (the controller is told).
        """
        binding = binding_of(ticket)
        home = self.backends.get(url)
        if binding is None or home is None or binding.backend is home or not home.usable:
            return False
        if self.score(home, self._clock()) >= 1.0:
            return False
        binding.release()
        ticket.assignment = home.bind()
        self.notify()
        return True

    def frees_slot(self, ticket: Ticket, /) -> bool:
        """Whether taking `ticket` back (pause, requeue) leaves its backend a slot for
        another request: not when the backend is over its capacity (e.g. its learned
        batch shrank), where the victim only makes room for the requests above it."""
        binding = binding_of(ticket)
        if binding is None:
            return True
        backend = binding.backend
        return backend.usable and backend.in_flight - 1 < self.backend_slots(backend)

    # -- backends -------------------------------------------------------------------------

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
        """The usable backend with the lowest score below 1 (fewest in flight on ties)."""
        now = self._clock()
        best: Backend | None = None
        best_score = 1.0
        for backend in self.backends.values():
            if not backend.usable:
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
        for backend in self.backends.values():  # noqa: SIM110 - any() costs a generator a call
            if backend.reachable and backend.healthy:
                return True
        return False

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
        ticket.assignment = backend.bind()

    def on_release(self, ticket: Ticket, /) -> None:
        if (binding := binding_of(ticket)) is not None:
            binding.release()
            if self.on_freed is not None:
                self.on_freed(binding.backend)

    def least_loaded(self) -> Backend | None:
        """A usable backend for traffic outside flow control (fewest in flight)."""
        candidates = [b for b in self.backends.values() if b.usable]
        return min(candidates, key=lambda b: b.in_flight, default=None)

    def pool_saturation(self) -> float:
        """The lowest backend score (1.0 when none is usable): what gates dispatch."""
        now = self._clock()
        lowest = min((self.score(b, now) for b in self.backends.values() if b.usable), default=1.0)
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
            "healthy": backend.healthy,
            "health_error": backend.health_error,
            "consecutive_failures": backend.strikes,
            "next_probe_in_s": None if backend.probe_at is None else backend.probe_at - now,
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


def utilization_score(settings: UtilizationSettings, backend: Backend, now: float) -> float:
    """A backend's load from its scraped metrics (>= 1: saturated), by the stale policy
    when they are missing or older than `settings.staleness`."""
    m = backend.metrics
    at = backend.scraped_at
    if m is None or at is None or now - at > settings.staleness:
        if settings.stale_policy == "fail-open":
            return 0.0
        if settings.stale_policy == "fail-closed" or m is None:
            return math.inf
    assert m is not None
    return max(
        (m.waiting + backend.unseen) / settings.queue_depth_threshold,
        m.kv / settings.kv_cache_threshold,
    )


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
        return utilization_score(self.settings, backend, now)

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
        if not backend.reachable and not backend.healthy:
            # It answers again after an outage: probe now rather than after a backoff
            # that may have grown to its maximum. Only on this transition, so a server
            # whose metrics work while its engine is dead is not probed every scrape.
            self.probe_soon(backend)
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
