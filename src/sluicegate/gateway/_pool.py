"""Pools of backends (one flow controller and detector each) and model routing."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import math
import re
from collections import deque
from typing import TYPE_CHECKING, Final, final

import sluicegate as sg

from ._adaptive import AdaptiveDetector, ResponseObserver
from ._affinity import SlotLoans
from ._config import AdaptiveSettings, ConcurrencySettings, GatewayConfigError, UtilizationSettings
from ._errors import GatewayError
from ._health import HealthProbes
from ._preempt import Preemption
from ._resume import PausePolicy
from ._saturation import ConcurrencyDetector, UtilizationDetector
from ._scrape import scrape_forever

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import aiohttp

    from ._config import PoolSettings
    from ._saturation import Backend

__all__ = ["DrainMeter", "Pool", "Router", "body_claim"]

#: Retry-After when a band has not drained at all lately, so no rate is known.
UNKNOWN_RETRY_AFTER: Final = 10
MAX_RETRY_AFTER: Final = 60


@final
class DrainMeter:
    """A band's recent dispatch rate, from the times of its last dispatches."""

    WINDOW: Final = 10.0

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=2048)

    def record(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float:
        """Dispatches per second over the last `WINDOW` seconds (0.0 if none)."""
        times = self._times
        horizon = now - self.WINDOW
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            return 0.0
        return len(times) / max(now - times[0], 1.0)


@final
class Pool:
    """A set of backends with its own `FlowController` and saturation detector.

    Args:
        settings: the pool's configuration.
        flow_control: the controller configuration.
        clock: the loop clock.
    """

    def __init__(
        self, settings: PoolSettings, flow_control: sg.FlowControlConfig, clock: Callable[[], float]
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._clock = clock
        self.detector = _new_detector(settings, clock)
        self.detector.health = settings.health
        #: Probes of backends taken out of service by passive health.
        self.probes = HealthProbes(self.detector)
        self.controller = sg.FlowController(flow_control, saturation=self.detector)
        # A paused request lends its slot and gets one back on its own backend.
        loans = SlotLoans(self.detector, self._may_take_back, self.controller.holds_slot)
        self.detector.on_freed = loans.freed
        self.preemption = Preemption(
            self.controller,
            max_requeues=settings.max_requeues,
            enabled=settings.preemptive_requeue,
            pause_policy=_pause_policy(settings),
            move_to=self.detector.move_to,
            frees_slot=self.detector.frees_slot,
            evict_below=_evict_below(settings),
            loans=loans,
        )
        self._meters: dict[int, DrainMeter] = {}
        self._scrapers: dict[str, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def _may_take_back(self, backend: Backend, ticket: sg.Ticket) -> bool:
        """Whether a slot `backend` just freed may go back to a paused request's loan:
        only when no request of the band that pauses others (the top) waits, and taking
        it leaves the free slots demand headroom keeps for that band. (Measured: without
        the headroom check loans took those slots and the Poisson 2x interactive TTFT
        p99 went from 1.3x to 2.7x idle; docs/benchmarks.md 5d, 5f.) The loan is
        pausable work, so it may use the top band's reserve down to its idle part, as
        at dispatch: with the plain check, once pausable work filled the reserve, 19
        of 26 loans at Poisson 2x waited their 10 s out and resumed elsewhere."""
        del backend  # any backend: the top band may be dispatched to any
        top = self.preemption.top_priority
        if top is None:
            return True
        controller = self.controller
        return controller.queued_requests(top) == 0 and controller.leaves_headroom(
            min(ticket.priority, top - 1), preemptible=ticket.preemptible
        )

    def start_scraping(self, session: aiohttp.ClientSession) -> None:
        """Start one scrape loop per backend (utilization pools only) and allow probes."""
        self._session = session
        self.probes.start(session)
        for url in self.detector.backends:
            self._start_scraper(url)

    def _start_scraper(self, url: str) -> None:
        detector = self.detector
        if self._session is None:
            return
        if not isinstance(detector, UtilizationDetector) and not (
            isinstance(detector, AdaptiveDetector) and detector.settings.use_metrics
        ):
            return
        coro = scrape_forever(self._session, detector, detector.backends[url])
        task = asyncio.get_running_loop().create_task(coro, name=f"scrape {self.name} {url}")
        self._scrapers[url] = task

    def _stop_scraper(self, url: str) -> None:
        task = self._scrapers.pop(url, None)
        if task is not None:
            task.cancel()
            # Keep a reference until it is done, then forget it.
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def stop_scraping(self) -> None:
        """Cancel every scrape loop and health probe and wait for them to end."""
        await self.probes.aclose()
        for url in list(self._scrapers):
            self._stop_scraper(url)
        tasks = list(self._retired)
        for task in tasks:
            task.cancel()
        # The loops end with CancelledError, which is what we asked for; anything else
        # was already logged by the loop itself.
        await asyncio.gather(*tasks, return_exceptions=True)

    def check(self, settings: PoolSettings) -> None:
        """Raise `GatewayConfigError` if `settings` cannot be applied without a restart."""
        old, new = self.settings.saturation, settings.saturation
        if (
            isinstance(old, UtilizationSettings)
            and isinstance(new, UtilizationSettings)
            and old.adaptive_limit != new.adaptive_limit
        ):
            raise GatewayConfigError(
                f"pools[{self.name}].saturation.adaptive_limit: changing it needs a restart"
            )
        if settings.saturation.type != self.settings.saturation.type:
            raise GatewayConfigError(
                f"pools[{self.name}].saturation.type: changing {self.settings.saturation.type!r}"
                f" to {settings.saturation.type!r} needs a restart"
            )

    def apply(
        self, settings: PoolSettings, flow_control: sg.FlowControlConfig, priorities: Iterable[int]
    ) -> None:
        """Adopt validated settings; nothing queued or in flight is dropped."""
        self.settings = settings
        self.preemption.enabled = settings.preemptive_requeue
        self.preemption.max_requeues = settings.max_requeues
        self.preemption.pause_policy = _pause_policy(settings)
        self.preemption.evict_below = _evict_below(settings)
        self.controller.reconfigure(flow_control)
        self.controller.reconcile_priorities(priorities)
        _configure(self.detector, settings.saturation)
        self.detector.health = settings.health
        added, removed = self.detector.set_backends(settings.backends)
        for backend in removed:
            self._stop_scraper(backend.url)
            self.probes.cancel(backend.url)
        for backend in added:
            self._start_scraper(backend.url)

    def observe(self, ticket: sg.Ticket) -> ResponseObserver | None:
        """What learns from the answer to a dispatched `ticket` (adaptive pools only)."""
        detector = self.detector
        return detector.observe(ticket) if isinstance(detector, AdaptiveDetector) else None

    def has_free_slot(self) -> bool:
        """Whether a request could be dispatched now without waiting for a slot."""
        if isinstance(self.detector, AdaptiveDetector):
            # A probe slot may queue its request inside the engine: not room to count on.
            return self.detector.proven_free() >= 1
        return self.detector.slots()[0] >= 1

    def dispatched(self, priority: int, now: float) -> None:
        """Record a dispatch from band `priority` (feeds Retry-After)."""
        meter = self._meters.get(priority)
        if meter is None:
            meter = self._meters[priority] = DrainMeter()
        meter.record(now)

    def retry_after(self, priority: int, exc: Exception | None = None) -> int | None:
        """The `Retry-After` of a 429 in band `priority`, or None: send none.

        An early rejection and a displacement advise their own estimate (when the
        work ahead will have drained; `x-sluicegate-retry` says ``deadline`` or
        ``displaced``). With `retry_reservations` (the default) any other advice is a
        promise: only a refusal that reserved a place advises its delay; any other 429
        advises nothing and says why (`x-sluicegate-retry`), so the client backs off by
        its own policy. Without, the delay the refusal `exc` advised, else the time the
        pool needs to drain what waits at that priority and above (the flow
        controller's wait estimate); before the pool has a drain rate, the band's own
        recent dispatch rate."""
        if isinstance(exc, sg.DeadlineUnreachableError | sg.DisplacedError):
            return exc.retry_after
        if self.controller.config.retry_reservations:
            if isinstance(exc, sg.QueueFullError) and exc.reserved:
                return exc.retry_after
            return None
        if isinstance(exc, sg.QueueFullError) and exc.retry_after is not None:
            return exc.retry_after
        wait, _ = self.controller.estimate_wait(priority)  # O(bands): runs on every 429
        if wait is None:
            queued = self.controller.queued_requests(priority)
            meter = self._meters.get(priority)
            rate = meter.rate(self._clock()) if meter is not None else 0.0
            if rate <= 0.0:
                return UNKNOWN_RETRY_AFTER
            wait = (queued + 1) / rate
        return max(1, min(MAX_RETRY_AFTER, math.ceil(wait)))

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.controller!r}>"


def body_claim(body: bytes | bytearray) -> bytes:
    """What names a request for a place promised with Retry-After (the flow
    controller's ``claim``): a digest of its body, which a retry sends unchanged."""
    return hashlib.blake2b(body, digest_size=16).digest()


#: The detector of a pool, by its saturation type.
PoolDetector = AdaptiveDetector | UtilizationDetector | ConcurrencyDetector


def _new_detector(settings: PoolSettings, clock: Callable[[], float]) -> PoolDetector:
    sat = settings.saturation
    if isinstance(sat, UtilizationSettings):
        if sat.adaptive_limit:
            return AdaptiveDetector.for_utilization(settings.backends, sat, clock)
        return UtilizationDetector(settings.backends, sat, clock)
    if isinstance(sat, AdaptiveSettings):
        return AdaptiveDetector(settings.backends, sat, clock)
    return ConcurrencyDetector(settings.backends, sat, clock)


def _configure(
    detector: PoolDetector, sat: AdaptiveSettings | UtilizationSettings | ConcurrencySettings
) -> None:
    """Hand new settings to a detector of the same type (`Pool.check` made sure)."""
    if isinstance(detector, UtilizationDetector):
        assert isinstance(sat, UtilizationSettings)
        detector.configure(sat)
    elif isinstance(sat, UtilizationSettings):
        assert isinstance(detector, AdaptiveDetector)
        detector.configure_utilization(sat)
    elif isinstance(detector, AdaptiveDetector):
        assert isinstance(sat, AdaptiveSettings)
        detector.configure(sat)
    else:
        assert isinstance(sat, ConcurrencySettings)
        detector.configure(sat)


@final
class Router:
    """Finds the pool serving a model: exact names first, then patterns, then the default."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self._exact: dict[str, Pool] = {}
        self._patterns: list[tuple[re.Pattern[str], Pool]] = []
        self._default: Pool | None = None
        self._served: list[str] = []
        for pool in pools:
            for model in pool.settings.models:
                self._served.append(model)
                if any(c in model for c in "*?["):
                    self._patterns.append((re.compile(fnmatch.translate(model)), pool))
                else:
                    self._exact.setdefault(model, pool)
            if pool.settings.default and self._default is None:
                self._default = pool

    @property
    def served_models(self) -> list[str]:
        """Model names and patterns, as configured."""
        return list(self._served)

    def route(self, model: object) -> Pool:
        """The pool for `model` (a request body's ``model`` field, possibly absent).

        Raises:
            GatewayError: no pool serves it and there is no default pool (404).
        """
        if isinstance(model, str):
            pool = self._exact.get(model)
            if pool is not None:
                return pool
            for pattern, candidate in self._patterns:
                if pattern.match(model):
                    return candidate
        if self._default is not None:
            return self._default
        served = ", ".join(self._served)
        if not isinstance(model, str):
            raise GatewayError(
                400,
                f"the request names no model; this gateway serves: {served}",
                code="missing_model",
                param="model",
            )
        raise GatewayError(
            404,
            f"The model '{model}' does not exist on this gateway. Served models: {served}",
            code="model_not_found",
            param="model",
        )


def _pause_policy(settings: PoolSettings) -> PausePolicy | None:
    if settings.preemption == "off" or settings.max_pauses == 0:
        return None
    return PausePolicy(max_pauses=settings.max_pauses)


def _evict_below(settings: PoolSettings) -> int | None:
    return settings.evict_below_priority if settings.evict_streams else None
