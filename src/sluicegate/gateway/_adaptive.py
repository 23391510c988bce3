"""`saturation: {type: adaptive}`: learn each backend's useful concurrency from its answers.

An inference engine runs at most a batch of requests at once (vLLM's ``max_num_seqs``,
or fewer when its KV cache is the limit); a request sent beyond that waits in the
engine's own FCFS queue, where priority does not exist. The signal that this happened is
the request's **time to first token** (TTFT): a queued request gets its first token a
whole slot-turnover later than one admitted at once. So, per backend:

* ``base_ttft``: the lowest TTFT of recent streamed answers (a windowed minimum, so it
  follows a backend that became slower, and drops at once when it becomes faster);
* a sample is **congested** when its TTFT exceeds ``ttft_tolerance x base_ttft``;
* **increase** (the request was sent with the backend within a quarter of its limit,
  and its TTFT was clean): +1 per sample in slow start (doubling per round trip,
  as TCP), +1/limit per sample after the first congestion (one slot per limit's worth
  of clean answers);
* **decrease** (congested): the limit drops to one below the number of requests that
  were in flight when the congested request was sent, but by at most a tenth, and at
  most once per overshoot (a request sent before the last decrease does not decrease
  it again);
* **probe**: a backend takes at most 2 more requests than the most it recently served
  with a clean TTFT, so a burst never pushes a whole untested limit into its queue;
* **who probes**: a slot beyond what was seen to work (and beyond the batch the
  metrics showed) is a *probe*: its request may land in the engine's queue. Requests
  below the highest priority the pool serves take probes first and proven slots last;
  requests of the highest priority take proven slots first. So learning costs only
  lower-priority work an engine-queue wait (measured: at 2x overload, the interactive
  requests that landed on the first probes beyond vLLM's batch waited 0.3-0.5 s);
* **batch**: with metrics, the most requests the engine ran while others waited is its
  batch size; the backend never gets more (no probing needed);
* **errors** (5xx, 429, connection failures) halve the limit and restart slow start,
  which also covers a backend that restarted;
* **waiting**: a streamed request with no first token after ``ttft_tolerance x
  base_ttft`` is sitting in the engine's queue right now; while one does, the backend
  takes nothing more. This is checked when dispatch asks, never by a timer.

The limit changes only on observations (no polling). Non-streamed answers carry no TTFT,
so they only count in flight and report errors. See docs/design.md for why this is
Vegas/AIMD-like on TTFT rather than Gradient2 on the whole response time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, final

from ._config import AdaptiveSettings
from ._saturation import Backend, BackendMetrics, _PoolDetector, binding_of, utilization_score

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sluicegate import Ticket

    from ._config import UtilizationSettings

__all__ = ["AdaptiveDetector", "AdaptiveLimit", "ResponseObserver"]

#: Samples per half of the windowed minimum of TTFT.
_BASE_WINDOW: Final = 64
#: A congested sample lowers the limit to no less than this share of it.
_MAX_DECREASE: Final = 0.9
#: A request sent with in flight >= limit - limit // this (at least 1) tested the limit.
_NEAR_LIMIT_DIVISOR: Final = 4
#: Requests a backend may hold beyond the most it recently served with a clean TTFT.
_PROBE: Final = 2
#: Scrapes showing a queue per half of the windowed maximum of the batch size.
_BATCH_WINDOW: Final = 100


@final
class AdaptiveLimit:
    """The learned concurrency limit of one backend. Sans-I/O: every step takes `now`.

    Args:
        initial: the limit before anything is known.
        minimum, maximum: its bounds.
        tolerance: a TTFT above ``tolerance x base`` is congested.
    """

    __slots__ = (
        "_batch_count",
        "_older_batch",
        "_older_confirmed",
        "_older_min",
        "_recent_batch",
        "_recent_confirmed",
        "_recent_min",
        "_window_count",
        "congestions",
        "errors",
        "last_decrease_seq",
        "latest_sent",
        "limit",
        "maximum",
        "minimum",
        "pending",
        "samples",
        "slow_start",
        "tolerance",
    )

    def __init__(self, initial: float, minimum: float, maximum: float, tolerance: float) -> None:
        self.limit = float(initial)
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.tolerance = tolerance
        self.slow_start = True
        self.samples = 0
        self.congestions = 0
        self.errors = 0
        #: Dispatch sequence of the last request sent before the last decrease.
        self.last_decrease_seq = -1
        #: Dispatch sequence of the last request sent to this backend.
        self.latest_sent = -1
        #: Streamed requests still waiting for a first token: seq -> sent at.
        self.pending: OrderedDict[int, float] = OrderedDict()
        self._recent_min = math.inf
        self._older_min = math.inf
        self._recent_confirmed = 0
        self._older_confirmed = 0
        self._recent_batch = 0.0
        self._older_batch = 0.0
        self._batch_count = 0
        self._window_count = 0

    @property
    def confirmed(self) -> int:
        """The most requests in flight at which a recent request still got a clean TTFT."""
        return max(self._recent_confirmed, self._older_confirmed)

    @property
    def batch(self) -> int | None:
        """The engine's batch size from its metrics (the most it ran while requests
        waited, recently), or None without metrics or before it ever queued."""
        batch = max(self._recent_batch, self._older_batch)
        return int(batch) if batch >= 1 else None

    @property
    def capacity(self) -> int:
        """Requests this backend may hold in flight now (at least 1): the limit, but at
        most `_PROBE` beyond what was recently seen to work, so a burst cannot push a
        whole untested limit into the engine's queue at once, and never more than the
        engine's batch when its metrics tell it (no probe needed then)."""
        capacity = min(int(self.limit), self.confirmed + _PROBE)
        batch = self.batch
        if batch is not None:
            capacity = min(capacity, batch)
        return max(1, capacity)

    @property
    def proven(self) -> int:
        """Requests this backend may hold with no risk of an engine queue, as far as
        anything showed: the most that ran with a clean TTFT, or the engine's batch
        from its metrics (at least 1, at most `capacity`). Slots above are probes."""
        return min(self.capacity, max(self.confirmed, self.batch or 0, 1))

    @property
    def base_ttft(self) -> float | None:
        """The windowed minimum TTFT, None before the first sample."""
        base = min(self._recent_min, self._older_min)
        return None if math.isinf(base) else base

    def waiting_since(self, now: float) -> float | None:
        """Seconds the oldest streamed request has waited for its first token beyond
        ``tolerance x base``, if it has: it sits in the engine's queue."""
        base = self.base_ttft
        if base is None or not self.pending:
            return None
        sent_at = next(iter(self.pending.values()))
        late = now - sent_at - self.tolerance * base
        return late if late > 0 else None

    def _learn_base(self, ttft: float) -> None:
        self._recent_min = min(self._recent_min, ttft)
        self._window_count += 1
        if self._window_count >= _BASE_WINDOW:
            # Forget the older half: a backend that slowed down gets a new base within
            # two windows, while one outlier low sample cannot pin it forever.
            self._older_min, self._recent_min = self._recent_min, math.inf
            self._older_confirmed, self._recent_confirmed = self._recent_confirmed, 0
            self._window_count = 0

    def first_token(self, seq: int, ttft: float, in_flight_at_send: int, latest_seq: int) -> None:
        """A streamed request sent as number `seq` got its first token after `ttft` s.

        Args:
            in_flight_at_send: requests in flight on this backend once it was sent
                (itself included).
            latest_seq: the highest sequence sent to this backend so far.
        """
        self.pending.pop(seq, None)
        self.samples += 1
        base = self.base_ttft
        self._learn_base(ttft)
        if base is not None and ttft > self.tolerance * base:
            self.congestions += 1
            if seq > self.last_decrease_seq:
                # Down to just below the load that queued, but by at most a tenth: one
                # sample slowed by something else (a long prompt, a busy host) must not
                # collapse the limit.
                target = min(self.limit - 1.0, in_flight_at_send - 1.0)
                self.limit = max(self.minimum, _MAX_DECREASE * self.limit, target)
                self.last_decrease_seq = latest_seq
                self.slow_start = False
            return
        self._recent_confirmed = max(self._recent_confirmed, in_flight_at_send)
        capacity = self.capacity
        near = capacity - max(1, capacity // _NEAR_LIMIT_DIVISOR)
        # Near the limit, or at the most ever seen to work: either tested the top.
        if in_flight_at_send >= min(near, self.confirmed):
            # Near the limit and clean: probe one more. "Near", not "at": headroom kept
            # for higher bands keeps lower bands some slots short of the limit.
            step = 1.0 if self.slow_start else 1.0 / self.limit
            # No further than the probe above what was seen to work: the limit stays a
            # figure that was tested, not one that grew while nothing pressed on it.
            tested = max(self.limit, float(self.confirmed + _PROBE))
            self.limit = min(self.maximum, self.limit + step, tested)

    def queued(self, running: float) -> None:
        """The engine's metrics show a queue while it runs `running` requests."""
        self.congestions += 1
        self._recent_batch = max(self._recent_batch, running)
        self._batch_count += 1
        if self._batch_count >= _BATCH_WINDOW:
            self._older_batch, self._recent_batch = self._recent_batch, 0.0
            self._batch_count = 0
        # Once per overshoot: only if something was sent here since the last decrease.
        if self.latest_sent > self.last_decrease_seq:
            latest_seq = self.latest_sent
            target = min(self.limit - 1.0, max(running, 1.0))
            self.limit = max(self.minimum, _MAX_DECREASE * self.limit, target)
            self.last_decrease_seq = latest_seq
            self.slow_start = False

    def error(self, seq: int, latest_seq: int) -> None:
        """The backend failed request `seq` (error status or connection failure)."""
        self.pending.pop(seq, None)
        self.errors += 1
        if seq > self.last_decrease_seq:
            self.limit = max(self.minimum, self.limit / 2.0)
            self.last_decrease_seq = latest_seq
            self.slow_start = True

    def forget(self, seq: int) -> None:
        """Request `seq` ended; it no longer waits for a first token."""
        self.pending.pop(seq, None)

    def __repr__(self) -> str:
        return f"<AdaptiveLimit {self.limit:.2f} base={self.base_ttft}>"


@final
class ResponseObserver:
    """What the gateway tells the detector about one dispatched request's answer."""

    __slots__ = ("_detector", "_seen", "_seq", "_state", "_url", "in_flight_at_send", "sent_at")

    def __init__(
        self, detector: AdaptiveDetector, url: str, seq: int, sent_at: float, in_flight: int
    ) -> None:
        self._detector = detector
        self._url = url
        self._seq = seq
        self.sent_at = sent_at
        self.in_flight_at_send = in_flight
        self._seen = False
        self._state: AdaptiveLimit | None = detector.limits.get(url)

    def stream_started(self) -> None:
        """The answer will stream: its first chunk is a TTFT sample."""
        if self._state is not None:
            self._state.pending[self._seq] = self.sent_at

    def first_chunk(self) -> None:
        """The first chunk of a streamed answer arrived."""
        if self._seen or self._state is None:
            return
        self._seen = True
        ttft = self._detector.now() - self.sent_at
        self._state.first_token(self._seq, ttft, self.in_flight_at_send, self._detector.seq)
        self._detector.notify()

    def failed(self) -> None:
        """The backend answered an error status, or could not be reached."""
        if self._state is None:
            return
        self._seen = True
        self._state.error(self._seq, self._detector.seq)
        self._detector.notify()

    def ended(self) -> None:
        if self._state is not None:
            self._state.forget(self._seq)


@final
class AdaptiveDetector(_PoolDetector):
    """Per backend, at most its learned limit in flight (see the module docstring).

    Args:
        urls: the pool's backends.
        settings: initial, bounds and TTFT tolerance.
        clock: the loop clock (``loop.time``).
        utilization: a ``type: utilization`` pool's thresholds and stale policy, which
            then apply too: a backend is full when either says so (see
            `for_utilization`).
    """

    def __init__(
        self,
        urls: Iterable[str],
        settings: AdaptiveSettings,
        clock: Callable[[], float],
        utilization: UtilizationSettings | None = None,
    ) -> None:
        super().__init__(urls, clock)
        self.settings = settings
        self.thresholds = utilization
        self.limits: dict[str, AdaptiveLimit] = {u: self._new_limit() for u in self.backends}
        #: Dispatches so far (orders the requests for "once per overshoot").
        self.seq = 0
        #: The highest priority dispatched so far: it gets proven slots before probes.
        self.top_priority: int | None = None

    @classmethod
    def for_utilization(
        cls, urls: Iterable[str], sat: UtilizationSettings, clock: Callable[[], float]
    ) -> AdaptiveDetector:
        """The detector of a ``type: utilization`` pool with ``adaptive_limit`` (the
        default): its thresholds and stale policy, and the adaptive limit with its
        defaults. The thresholds alone let `queue_depth_threshold` requests wait in
        each engine's FCFS queue, which costs the top band a slot turnover (measured:
        4-19x the idle TTFT at 1x and 2x load)."""
        return cls(urls, _scrape_settings(AdaptiveSettings(), sat), clock, sat)

    def configure_utilization(self, sat: UtilizationSettings) -> None:
        """Adopt a utilization pool's new thresholds (see `for_utilization`)."""
        self.thresholds = sat
        self.configure(_scrape_settings(self.settings, sat))

    def stale_backends(self) -> int:
        sat = self.thresholds
        if sat is None:
            return 0
        now = self._clock()
        return sum(
            b.scraped_at is None or now - b.scraped_at > sat.staleness
            for b in self.backends.values()
        )

    def _new_limit(self) -> AdaptiveLimit:
        s = self.settings
        return AdaptiveLimit(s.initial_limit, s.min_limit, s.max_limit, s.ttft_tolerance)

    def now(self) -> float:
        return self._clock()

    def configure(self, settings: AdaptiveSettings) -> None:
        """Adopt new bounds and tolerance; learned limits are kept (clamped)."""
        self.settings = settings
        for state in self.limits.values():
            state.minimum, state.maximum = float(settings.min_limit), float(settings.max_limit)
            state.tolerance = settings.ttft_tolerance
            state.limit = min(max(state.limit, state.minimum), state.maximum)
        self.notify()

    def set_backends(self, urls: Iterable[str]) -> tuple[list[Backend], list[Backend]]:
        added, removed = super().set_backends(urls)
        for backend in added:
            self.limits[backend.url] = self._new_limit()
        for backend in removed:
            self.limits.pop(backend.url, None)
        return added, removed

    def score(self, backend: Backend, now: float) -> float:
        state = self.limits.get(backend.url)
        if state is None:
            return math.inf
        if state.waiting_since(now) is not None or self._queue_shown(backend, now):
            return 1.0  # a request sits in the engine's queue: send nothing more
        score = backend.in_flight / state.capacity
        if self.thresholds is not None:
            score = max(score, utilization_score(self.thresholds, backend, now))
        return score

    def _queue_shown(self, backend: Backend, now: float) -> bool:
        """The engine's last fresh metrics showed requests waiting in its own queue."""
        m = backend.metrics
        at = backend.scraped_at
        return (
            m is not None
            and m.waiting > 0
            and at is not None
            and now - at <= self.settings.staleness
        )

    # -- metrics, when the backend has them (the scrape loop calls these) --------------

    def scrape_started(self, backend: Backend) -> int:
        epoch = backend.epoch
        backend.epoch += 1
        return epoch

    def scrape_succeeded(self, backend: Backend, metrics: BackendMetrics, epoch: int) -> None:
        if self.thresholds is not None and not backend.reachable and not backend.healthy:
            self.probe_soon(backend)  # as `UtilizationDetector`: it answers again
        backend.metrics = metrics
        backend.scraped_at = self._clock()
        backend.reachable = True
        backend.scrapes += 1
        backend.last_error = None
        backend.seen_up_to(epoch)
        state = self.limits.get(backend.url)
        if state is not None and metrics.waiting > 0:
            # The engine queues: the same signal as a late first token, seen earlier.
            state.queued(metrics.running)
        self.notify()

    def scrape_failed(self, backend: Backend, error: str, *, reachable: bool) -> None:
        backend.failures += 1
        backend.last_error = error
        if self.thresholds is not None:  # as `UtilizationDetector`: metrics are required
            backend.reachable = reachable
            self.notify()
            return
        # A backend without metrics is fine (TTFT is enough); only a refused
        # connection says it is down.
        if not reachable:
            backend.reachable = False
            self.notify()
        elif not backend.reachable:
            backend.reachable = True
            self.notify()

    def backend_slots(self, backend: Backend) -> float:
        state = self.limits.get(backend.url)
        return 0.0 if state is None else state.capacity

    def on_dispatch(self, ticket: Ticket, /) -> None:
        """Bind `ticket` to a backend with room: the highest priority to a proven slot
        when one is free, lower priorities to a probe when one is free (see "who
        probes" in the module docstring); among equals, the lowest score."""
        self._best = None
        priority = ticket.priority
        top = self.top_priority
        if top is None or priority > top:
            self.top_priority = top = priority
        backend = self._pick_for(probe_first=priority < top)
        if backend is None:  # only if dispatched without asking is_saturated first
            super().on_dispatch(ticket)
            return
        ticket.assignment = backend.bind()

    def probe_only(self) -> bool:
        """Whether every backend with room has only probes free (the flow controller
        then leaves them to a lower band when one waits)."""
        now = self._clock()
        room = False
        for backend in self.backends.values():
            state = self.limits.get(backend.url)
            if state is None or not backend.usable or self.score(backend, now) >= 1.0:
                continue
            if backend.in_flight < state.proven:
                return False
            room = True
        return room

    def probe_for(self, priority: int) -> bool:
        """Whether a request of `priority` would be dispatched into a free probe slot
        (lower priorities take probes first). Such a dispatch leaves every proven slot
        free, so demand headroom kept for higher bands must not refuse it: the probe
        would otherwise stay idle (the top band leaves it to lower ones), and the limit
        could never be tested upward again."""
        top = self.top_priority
        if top is None or priority >= top:
            return False
        now = self._clock()
        for backend in self.backends.values():
            state = self.limits.get(backend.url)
            if state is None or not backend.usable or self.score(backend, now) >= 1.0:
                continue
            if backend.in_flight >= state.proven:
                return True
        return False

    def frees_slot(self, ticket: Ticket, /) -> bool:
        """As `_PoolDetector.frees_slot`, counting proven slots only: the top band,
        for which room is made, does not take a probe."""
        binding = binding_of(ticket)
        state = None if binding is None else self.limits.get(binding.backend.url)
        if binding is None or state is None:
            return True
        backend = binding.backend
        return backend.usable and backend.in_flight - 1 < state.proven

    def proven_free(self) -> int:
        """Free slots over the usable backends that are not probes."""
        now = self._clock()
        free = 0
        for backend in self.backends.values():
            state = self.limits.get(backend.url)
            if state is None or not backend.usable or self.score(backend, now) >= 1.0:
                continue
            free += max(0, state.proven - backend.in_flight)
        return free

    def _pick_for(self, *, probe_first: bool) -> Backend | None:
        now = self._clock()
        best: Backend | None = None
        best_key: tuple[bool, float, int] | None = None
        for backend in self.backends.values():
            state = self.limits.get(backend.url)
            if state is None or not backend.usable:
                continue
            score = self.score(backend, now)
            if score >= 1.0:
                continue
            proven = backend.in_flight < state.proven
            key = (proven if probe_first else not proven, score, backend.in_flight)
            if best_key is None or key < best_key:
                best, best_key = backend, key
        return best

    def observe(self, ticket: Ticket) -> ResponseObserver | None:
        """An observer for the answer to `ticket` (dispatched by this detector)."""
        binding = binding_of(ticket)
        if binding is None:
            return None
        backend = binding.backend
        self.seq += 1
        state = self.limits.get(backend.url)
        if state is not None:
            state.latest_sent = self.seq
        return ResponseObserver(self, backend.url, self.seq, self._clock(), backend.in_flight)

    def limit_of(self, backend: Backend) -> float | None:
        """The requests `backend` may hold now, as learned (for /metrics)."""
        state = self.limits.get(backend.url)
        return None if state is None else float(state.capacity)

    def describe(self, backend: Backend) -> dict[str, Any]:
        doc = super().describe(backend)
        state = self.limits.get(backend.url)
        if state is not None:
            now = self._clock()
            doc |= {
                "concurrency_limit": state.capacity,
                "limit_estimate": round(state.limit, 3),
                "slow_start": state.slow_start,
                "confirmed_in_flight": state.confirmed,
                "proven_slots": state.proven,
                "engine_batch": state.batch,
                "base_ttft_s": state.base_ttft,
                "ttft_samples": state.samples,
                "congested_samples": state.congestions,
                "errors_seen": state.errors,
                "awaiting_first_token": len(state.pending),
                "engine_queue_suspected": state.waiting_since(now) is not None,
            }
        return doc

    def __repr__(self) -> str:
        limits = ", ".join(f"{s.limit:.1f}" for s in self.limits.values())
        return f"AdaptiveDetector({len(self.backends)} backends, limits [{limits}])"


def _scrape_settings(base: AdaptiveSettings, sat: UtilizationSettings) -> AdaptiveSettings:
    """`base` with a utilization pool's scrape settings (metrics are always read)."""
    return base.model_copy(
        update={
            "use_metrics": True,
            "scrape_interval": sat.scrape_interval,
            "staleness": sat.staleness,
            "scrape_timeout": sat.scrape_timeout,
            "metrics_path": sat.metrics_path,
        }
    )
