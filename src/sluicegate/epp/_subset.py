"""Subset hints: a request that may only go to some endpoints waits for one of them.

Design. A pool's controller judges capacity over the whole pool, so a hinted request
queued there could be dispatched while only endpoints outside its hint have room. A
hinted request therefore waits in a controller of its own *subset*: one
`sluicegate.FlowController` per (pool, set of hinted backends), whose detector
(`SubsetDetector`) looks only at those backends. The backends are the pool's own
`Backend` objects, so in-flight counts are shared: a dispatch through a subset
controller counts against the pool and the other way round. A hinted request is never
dispatched unless one of its endpoints has room, and never spills onto another.

A hint that names every backend of the pool is the pool itself: it uses the pool's
controller (the common case when Envoy sends the whole endpoint list).

Wake-ups. A release frees a slot on one backend, and a controller other than the one
that released may be waiting for it: after every release the picker calls `released`,
which notifies the pool's detector (when a subset ticket freed it) and every subset
whose backends include the freed one. The controllers re-run dispatch on their next
loop turn; nothing polls. With a utilization pool, whose scores change with scrapes
the subset cannot hear about, a subset re-checks at the pool's scrape interval while
requests wait (the `recheck_interval` of the detector protocol).

Limits. Strict priority holds within each controller; between a pool's queue and a
subset's queue a freed slot goes to whichever dispatches first (the releasing
controller, synchronously). Subset controllers are created on first use and closed
when idle once more than `MAX_SUBSETS` exist.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Final, final

import sluicegate as sg
from sluicegate.gateway import Backend, UtilizationSettings, binding_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from sluicegate.gateway import Pool

__all__ = ["MAX_SUBSETS", "SubsetControllers", "SubsetDetector", "backend_of"]

#: Subset controllers kept before idle ones are closed.
MAX_SUBSETS: Final = 64


def backend_of(ticket: sg.Ticket) -> Backend | None:
    """The backend a pool's detector bound `ticket` to, or None."""
    binding = binding_of(ticket)
    return None if binding is None else binding.backend


@final
class SubsetDetector:
    """A saturation detector over some backends of a pool (see the module docstring).

    Args:
        pool: the pool whose detector scores the backends.
        urls: the backends' base URLs (``http://ip:port``), all in the pool.
        clock: the loop clock.
    """

    def __init__(self, pool: Pool, urls: frozenset[str], clock: Callable[[], float]) -> None:
        self.pool = pool
        self.urls = urls
        self._clock = clock
        self._listener: Callable[[], None] | None = None
        self._best: Backend | None = None
        sat = pool.settings.saturation
        self.recheck_interval: float | None = (
            sat.scrape_interval if isinstance(sat, UtilizationSettings) else None
        )

    def _backends(self) -> Iterator[Backend]:
        backends = self.pool.detector.backends
        for url in self.urls:
            backend = backends.get(url)
            if backend is not None:
                yield backend

    def _pick(self) -> Backend | None:
        now = self._clock()
        score = self.pool.detector.score
        best: Backend | None = None
        best_score = 1.0
        for backend in self._backends():
            if not backend.reachable:
                continue
            s = score(backend, now)
            if s < best_score or (
                s == best_score and best is not None and backend.in_flight < best.in_flight
            ):
                best, best_score = backend, s
        return best

    def is_saturated(self) -> bool:
        self._best = best = self._pick()
        return best is None

    def has_endpoints(self) -> bool:
        return any(b.reachable for b in self._backends())

    def utilization(self) -> float:
        now = self._clock()
        score = self.pool.detector.score
        lowest = min((score(b, now) for b in self._backends() if b.reachable), default=1.0)
        return lowest if math.isfinite(lowest) else 1.0

    def on_dispatch(self, ticket: sg.Ticket, /) -> None:
        backend = self._best if self._best is not None else self._pick()
        self._best = None
        if backend is None:
            backend = min(self._backends(), key=lambda b: b.in_flight, default=None)
            if backend is None:
                return
        ticket.assignment = backend.bind()

    def on_release(self, ticket: sg.Ticket, /) -> None:
        if (binding := binding_of(ticket)) is not None:
            binding.release()

    def set_listener(self, listener: Callable[[], None] | None, /) -> None:
        self._listener = listener

    def notify(self) -> None:
        """Tell the subset's controller that a slot may have freed."""
        if self._listener is not None:
            self._listener()

    def __repr__(self) -> str:
        return f"SubsetDetector({self.pool.name}, {sorted(self.urls)})"


@final
class SubsetControllers:
    """The subset controllers of every pool, created on first use.

    Args:
        flow_control: the controller configuration (the pools').
        priorities: the bands every controller keeps.
    """

    def __init__(self, flow_control: sg.FlowControlConfig, priorities: Iterable[int]) -> None:
        self._config = flow_control
        self._priorities = list(priorities)
        self._subsets: dict[tuple[str, frozenset[str]], sg.FlowController] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._subsets)

    def items(self) -> Iterator[tuple[tuple[str, frozenset[str]], sg.FlowController]]:
        """(pool name, backend URLs) and controller of every live subset."""
        return iter(list(self._subsets.items()))

    async def controller(self, pool: Pool, urls: frozenset[str]) -> sg.FlowController:
        """The controller for `urls` of `pool` (the pool's own when `urls` is all of it).

        Raises:
            ControllerClosedError: the picker is draining.
        """
        if urls >= pool.detector.backends.keys():
            return pool.controller
        key = (pool.name, urls)
        ctl = self._subsets.get(key)
        if ctl is not None:
            return ctl
        if self._closed:
            raise sg.ControllerClosedError("the endpoint picker is shutting down")
        if len(self._subsets) >= MAX_SUBSETS:
            await self._close_idle()
        loop = asyncio.get_running_loop()
        ctl = sg.FlowController(self._config, saturation=SubsetDetector(pool, urls, loop.time))
        await ctl.__aenter__()
        ctl.reconcile_priorities(self._priorities)
        self._subsets[key] = ctl
        return ctl

    async def _close_idle(self) -> None:
        for key, ctl in list(self._subsets.items()):
            stats = ctl.statistics()
            if not stats.in_flight and not stats.queued_requests:
                del self._subsets[key]
                await ctl.aclose()

    def released(self, pool: Pool, backend: Any, *, from_subset: bool) -> None:
        """A ticket bound to `backend` of `pool` was released: wake whoever waits for it."""
        if from_subset:
            pool.detector.notify()
        url = getattr(backend, "url", None)
        for (name, urls), ctl in self._subsets.items():
            if name == pool.name and url in urls:
                detector = ctl.saturation
                assert isinstance(detector, SubsetDetector)
                detector.notify()

    def apply(self, flow_control: sg.FlowControlConfig, priorities: Iterable[int]) -> None:
        """Adopt a reloaded configuration and band set; nothing queued is dropped."""
        self._config = flow_control
        self._priorities = list(priorities)
        for ctl in self._subsets.values():
            ctl.reconfigure(flow_control)
            ctl.reconcile_priorities(self._priorities)

    def reconcile(self, priorities: Iterable[int]) -> None:
        """Make every subset's band set follow `priorities`."""
        self._priorities = list(priorities)
        for ctl in self._subsets.values():
            ctl.reconcile_priorities(self._priorities)

    async def aclose(self) -> None:
        """Close every subset controller: queued requests get 503 (shutting down)."""
        self._closed = True
        for ctl in list(self._subsets.values()):
            await ctl.aclose()

    def describe(self) -> list[dict[str, Any]]:
        """A JSON-able view for /debug/flowcontrol."""
        out = []
        for (name, urls), ctl in self._subsets.items():
            stats = ctl.statistics()
            out.append(
                {
                    "pool": name,
                    "endpoints": sorted(urls),
                    "queued_requests": stats.queued_requests,
                    "in_flight": stats.in_flight,
                    "outcomes": {o.value: n for o, n in stats.outcomes.items()},
                }
            )
        return out
