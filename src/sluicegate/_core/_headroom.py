"""Headroom sized to demand: free slots kept for higher bands, as many as they need now.

Strict priority decides only *who is next*: when every slot is taken by long
low-priority requests, an interactive request still waits for one of them to end. So a
band may dispatch only while, after the dispatch, at least ``reserve(band)`` slots stay
free for the bands above it. The reserve follows those bands' recent demand and is zero
when they send nothing, so a band alone uses the whole pool.

Sizing. Free slots behave like a small birth-death queue: higher-band arrivals (rate
``lam``, the sum over the bands above) take one, any completion (rate ``mu``, all bands)
gives one back while fewer than ``R`` are free, because lower bands refill a slot only
above ``R``. With ``rho = lam / mu``, the chance an arrival finds no free slot is about
``rho**R * (1 - rho)``; the reserve is the smallest ``R`` that keeps it below `miss`.
It is capped by what the bands above can use at all (Little's law: ``lam x service
time``, plus three standard deviations of a Poisson count) and by half the capacity, so
lower bands are never shut out.

Rates are counts over the last `window` seconds, refreshed on every arrival and
completion (the core never reads a clock): a band that stopped sending drops out of
the reserve one window later. Sans-I/O: every step takes ``now``.

Work conservation. The top band's reserve need not be idle: a slot held by
*preemptible* work (which the gateway pauses at once for the top band) is as good as a
free one. So plain work counts such slots as free for the top band's part of its
reserve, preemptible work may fill that reserve down to an idle part sized for a
looser target (`idle_miss`: the arrivals that miss cost a pause, not a wait), and
while preemptible work waits, plain work leaves it the top band's reserve at its peak
rate of the last `DEFAULT_MEMORY` seconds (a burst after a quiet spell then finds work
to pause). Measured: docs/benchmarks.md 5f.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, final

__all__ = ["DemandHeadroom"]

#: Seconds of history behind the arrival and completion rates.
DEFAULT_WINDOW: Final = 3.0
#: Target chance that a higher-band arrival finds no free slot.
DEFAULT_MISS: Final = 0.01
#: Seconds the top band's peak arrival rate is remembered for preemptible slots.
DEFAULT_MEMORY: Final = 30.0
#: Target chance that a top-band arrival finds no *idle* slot where preemptible work
#: fills the rest of its reserve: such an arrival costs a pause, not a wait.
DEFAULT_IDLE_MISS: Final = 0.3
#: Completions in the window before the drain rate counts as known.
MIN_DRAIN_SAMPLES: Final = 8
#: Weight of the newest sample in a band's mean service time.
_SERVICE_WEIGHT: Final = 0.1


@final
class DemandHeadroom:
    """Per-band arrival and service accounting, and the reserve each band must leave."""

    __slots__ = (
        "_arrivals",
        "_completions",
        "_expiry",
        "_mean_service",
        "_mu",
        "_peaks",
        "_rates",
        "_service",
        "_top",
        "idle_miss",
        "miss",
        "reserves",
        "window",
    )

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        miss: float = DEFAULT_MISS,
        idle_miss: float = DEFAULT_IDLE_MISS,
    ) -> None:
        self.window = window
        self.miss = miss
        self.idle_miss = idle_miss
        self._arrivals: dict[int, deque[float]] = {}
        self._completions: deque[float] = deque()
        #: Mean seconds a request of the band holds its slot (dispatch to release).
        self._service: dict[int, float] = {}
        #: Arrivals per second by band, and completions per second, as of the last refresh.
        self._rates: dict[int, float] = {}
        self._mu = 0.0
        #: (arrival rate, busy slots) of the bands above each band, since the last refresh.
        self.reserves: dict[int, tuple[float, float]] = {}
        #: Mean seconds any request holds its slot.
        self._mean_service = 0.0
        #: (time, arrival rate) of the top band: a falling sequence whose head is the
        #: peak of the last `DEFAULT_MEMORY` seconds.
        self._peaks: deque[tuple[float, float]] = deque()
        #: The oldest time in any window (inf: none): before the window passes it,
        #: nothing leaves, and a refresh need not walk the bands (the usual case: it
        #: runs on every arrival and completion).
        self._expiry = math.inf
        #: The highest band that ever completed a request (the peak's band).
        self._top: int | None = None

    def arrived(self, priority: int, now: float) -> None:
        """A request of band `priority` was submitted."""
        times = self._arrivals.get(priority)
        if times is None:
            times = self._arrivals[priority] = deque()
        times.append(now)
        if now < self._expiry:
            self._expiry = now
        self.refresh(now, priority)

    def completed(self, priority: int, held_s: float, now: float) -> None:
        """A request of band `priority` gave its slot back after holding it `held_s`."""
        self._completions.append(now)
        if now < self._expiry:
            self._expiry = now
        mean = self._mean_service
        self._mean_service = held_s if mean <= 0.0 else mean + _SERVICE_WEIGHT * (held_s - mean)
        old = self._service.get(priority)
        self._service[priority] = held_s if old is None else old + _SERVICE_WEIGHT * (held_s - old)
        if self._top is None or priority > self._top:
            self._top = priority
        self.refresh(now)

    def allows(
        self,
        priority: int,
        free_slots: float,
        capacity: float,
        *,
        reclaimable: float = 0.0,
        top: int | None = None,
        preemptible_waiting: bool = False,
    ) -> bool:
        """Whether band `priority` may take one of `free_slots` (of `capacity` slots).

        `reclaimable` slots are held by preemptible work, which band `top` (the
        highest) gets back at once: they count as free for its part of the reserve.
        While preemptible work waits (`preemptible_waiting`), the top band's peak
        reserve of the last `DEFAULT_MEMORY` seconds is left to it (idle or held by it).
        """
        busy = capacity - free_slots
        reserve = self.reserve_for(priority, busy_slots=busy)
        if preemptible_waiting and top is not None and top > priority:
            soft = self.remembered_reserve(top, busy)
            if soft and free_slots + reclaimable - 1 < min(soft, math.floor(capacity / 2)):
                return False
        if not reserve:
            return True
        half = math.floor(capacity / 2)
        if reclaimable > 0 and top is not None and top > priority:
            # The idle part of the top band's reserve stays idle whatever holds the rest.
            idle = self.reserve_for(top - 1, busy_slots=busy, miss=self.idle_miss)
            if free_slots - 1 < min(idle, half):
                return False
            free_slots += min(reclaimable, self.reserve_for(top - 1, busy_slots=busy))
        return free_slots - 1 >= min(reserve, half)

    def allows_preemptible(
        self, priority: int, top: int, free_slots: float, capacity: float, middle: bool
    ) -> bool:
        """Whether preemptible work of band `priority` may take one of `free_slots`:
        it leaves idle only the part of the top band's reserve that keeps a pause rare
        (`idle_miss`), plus, when `middle` (a band between them has no backlog), the
        reserve of the bands between, which cannot take a slot back."""
        busy = capacity - free_slots
        keep = self.reserve_for(top - 1, busy_slots=busy, miss=self.idle_miss)
        if middle and self.reserve_for(priority, busy_slots=busy) > keep:
            # One slot, not their whole reserve: sized like the top band's, it kept
            # 5-9 slots idle at 2x overload (their load alone is near the pool's, so
            # the formula caps it at half the pool) while their arrivals, which
            # cannot pause anything, wait at most for the next completion without it.
            keep += 1
        return free_slots - 1 >= min(keep, math.floor(capacity / 2))

    def reserve_for(self, priority: int, busy_slots: float = 0.0, miss: float | None = None) -> int:
        """Slots band `priority` must leave free for the bands above it.

        `busy_slots` (the slots in use now) bounds the completion rate from below by
        Little's law (busy / mean service time): early on, when long requests have not
        ended yet, the measured rate alone would make every arrival look unservable.
        `miss`: the target chance of no free slot (None: `self.miss`).
        """
        demand = self.reserves.get(priority)
        if demand is None:
            lam = busy = 0.0
            for higher, rate in self._rates.items():
                if higher > priority:
                    lam += rate
                    busy += rate * self._service.get(higher, 0.0)
            demand = self.reserves[priority] = (lam, busy)
        lam, busy = demand
        if lam <= 0.0:
            return 0
        return _reserve(
            lam, self._completion_rate(busy_slots), busy, self.miss if miss is None else miss
        )

    def drain_rate(self, busy_slots: float) -> float | None:
        """Requests per second the pool finishes (and so takes from the queues), or None
        before `MIN_DRAIN_SAMPLES` completions in the window: no estimate yet.

        Bounded from below by Little's law (busy slots / mean service time), as in
        `reserve_for`, so a window not yet full does not understate it.
        """
        if len(self._completions) < MIN_DRAIN_SAMPLES:
            return None
        mu = self._completion_rate(busy_slots)
        return mu if mu > 0.0 else None

    def _completion_rate(self, busy_slots: float) -> float:
        """Completions per second in the window, bounded from below by Little's law
        (`busy_slots` / mean service time)."""
        if self._mean_service > 0.0:
            return max(self._mu, busy_slots / self._mean_service)
        return self._mu

    def rate(self, priority: int) -> float:
        """Arrivals per second of band `priority` over the window (as last refreshed)."""
        return self._rates.get(priority, 0.0)

    def refresh(self, now: float, arrived: int | None = None) -> None:
        """Forget what left the window; reserves are recomputed when next asked.
        `arrived`: the band an arrival was just added to (its rate changed)."""
        if self._expiry < now - self.window:
            self._expire(now - self.window)
        elif arrived is not None:
            self._rates[arrived] = len(self._arrivals[arrived]) / self.window
        self._mu = len(self._completions) / self.window
        self.reserves.clear()
        self._remember_peak(now)

    def _expire(self, horizon: float) -> None:
        """Drop the times before `horizon`; recompute every band's rate."""
        rates: dict[int, float] = {}
        expiry = math.inf
        for priority in list(self._arrivals):
            times = self._arrivals[priority]
            while times and times[0] < horizon:
                times.popleft()
            if times:
                rates[priority] = len(times) / self.window
                expiry = min(expiry, times[0])
            else:
                del self._arrivals[priority]
        completions = self._completions
        while completions and completions[0] < horizon:
            completions.popleft()
        if completions:
            expiry = min(expiry, completions[0])
        self._rates = rates
        self._expiry = expiry

    def _remember_peak(self, now: float) -> None:
        """Keep the top band's arrival rate of the last `DEFAULT_MEMORY` seconds."""
        peaks = self._peaks
        top = self._top  # every band that ever completed one
        rate = self._rates.get(top, 0.0) if top is not None else 0.0
        while peaks and peaks[-1][1] <= rate:
            peaks.pop()
        peaks.append((now, rate))
        while peaks[0][0] < now - DEFAULT_MEMORY:
            peaks.popleft()

    def remembered_reserve(self, top: int, busy_slots: float) -> int:
        """The top band's reserve at its peak rate of the last `DEFAULT_MEMORY` seconds:
        what preemptible work should hold for it. A burst that starts after a quiet
        spell shows no demand in the short window; pausing that work gives it slots at
        once, where the short window alone left every slot to work it cannot pause."""
        lam = self._peaks[0][1] if self._peaks else 0.0
        if lam <= 0.0:
            return 0
        service = self._service.get(top, 0.0)
        return _reserve(lam, self._completion_rate(busy_slots), lam * service, self.miss)

    def __repr__(self) -> str:
        return f"<DemandHeadroom rates={self._rates} mu={self._mu:.2f}>"


def _reserve(lam: float, mu: float, busy: float, miss: float) -> int:
    """Free slots that keep the chance of a higher arrival finding none below `miss`."""
    if lam <= 0.0:
        return 0
    cap = math.ceil(busy + 3.0 * math.sqrt(busy) + 1.0)
    if mu <= 0.0:
        return cap
    rho = lam / mu
    if rho >= 1.0:
        return cap
    needed = math.ceil(math.log(miss / (1.0 - rho)) / math.log(rho)) if rho > 0 else 0
    return max(1, min(needed, cap))
