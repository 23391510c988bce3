"""The asyncio shell around the scheduler: futures, the clock and timers.

The scheduler decides; this module only carries decisions out. It owns one Future
per waiting request (completed exactly once, with the ticket or an error), reads the
loop clock, and keeps at most one timer armed: at the earliest TTL, no-endpoint
deadline or idle collection, or at the detector's re-check interval while dispatch is
blocked on a detector that cannot notify. Nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, final

from ._core._admission import advised_seconds
from ._core._config import FlowControlConfig
from ._core._saturation import NeverSaturated
from ._core._scheduler import Scheduler
from ._core._ticket import State, Ticket
from ._errors import (
    ControllerClosedEvictedError,
    DisplacedError,
    EvictedError,
    NoEndpointsEvictedError,
    RejectedError,
    TTLExpiredError,
)
from ._types import ControllerStatistics, FlowKey, FlowStatistics, Outcome

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Hashable, Iterable
    from types import TracebackType

    from ._core._saturation import SaturationDetector

__all__ = ["FlowController"]

_log = logging.getLogger("sluicegate")


@final
class FlowController:
    """Decides if and when each request proceeds.

    Use it as an async context manager; requests made before it starts or after it
    closes get `ControllerClosedError`. Closing evicts every queued request.

    Args:
        config: the flow-control configuration (default: `FlowControlConfig()`).
        saturation: the detector asked before each dispatch (default: never saturated).
    """

    def __init__(
        self,
        config: FlowControlConfig | None = None,
        *,
        saturation: SaturationDetector | None = None,
    ) -> None:
        self._core = Scheduler(
            config if config is not None else FlowControlConfig(), on_fault=_log_fault
        )
        self._detector: SaturationDetector = (
            saturation if saturation is not None else NeverSaturated()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._in_pass = False
        self._again = False
        self._kicked = False
        self._had_endpoints = True

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> FlowController:
        if self._running or self._core.closed:
            raise RuntimeError("a FlowController can be started once")
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._had_endpoints = self._detector.has_endpoints()
        self._detector.set_listener(self._on_saturation_change)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: refuse new requests and evict every queued one (EvictedOther).

        Requests in flight stay in flight until released. Idempotent.
        """
        if self._core.closed:
            return
        self._running = False
        evicted = self._core.close(self._now())
        self._detector.set_listener(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ticket in evicted:
            self._fail(ticket)

    @property
    def config(self) -> FlowControlConfig:
        """The configuration in force."""
        return self._core.config

    @property
    def saturation(self) -> SaturationDetector:
        """The saturation detector."""
        return self._detector

    # -- requests -------------------------------------------------------------------

    async def enqueue_and_wait(
        self,
        key: FlowKey,
        *,
        size: int = 0,
        ttl: float | None = None,
        slo: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        claim: Callable[[], Hashable] | None = None,
        preemptible: bool = False,
    ) -> Ticket:
        """Wait until the request may proceed; return its ticket.

        The request counts as in flight until `ticket.release()`. If the waiting task
        is cancelled, the request leaves its queue at once and `CancelledError`
        propagates unchanged.

        Args:
            key: the request's flow.
            size: the request's size in bytes (counted against byte limits).
            ttl: seconds it may wait; None = the configured default; `math.inf` = forever.
            slo: seconds from now to its SLO deadline (for `slo-deadline` ordering).
            input_tokens: estimated prompt tokens, for token accounting; None = size / 4.
            output_tokens: estimated output tokens (e.g. max_tokens); None = the flow's
                recent average. Correct both later with `ticket.record_usage()`.
            claim: names this request (e.g. a digest of its body, which a retry repeats)
                so that a place promised to it when a full band refused it
                (`QueueFullError.retry_after`) is kept for it, not for any request of its
                flow. Called only when needed.
            preemptible: the caller gives the slot back at once (pause, requeue) when
                the pool's top band needs it: it may use slots demand headroom keeps
                for that band (`Ticket.preemptible`).

        Raises:
            QueueFullError: a capacity limit is reached (429).
            DeadlineUnreachableError: its deadline cannot be met (early rejection, 429).
            DisplacedError: it made room for a higher-priority request (429).
            NoEndpointsError: the pool has no backend and may not wait for one (503).
            ControllerClosedError: the controller is not running (503).
            TTLExpiredError: it waited its whole TTL (503).
            NoEndpointsEvictedError: it waited its no-endpoint TTL with no backend (503).
            ControllerClosedEvictedError: the controller closed while it waited (503).
            ValueError: `size`, `ttl` or `slo` is invalid.
        """
        ticket = self._submit(
            key, size, ttl, slo, input_tokens, output_tokens, claim=claim, preemptible=preemptible
        )
        if ticket._state is State.DISPATCHED:
            ticket._handed_over = True
            return ticket
        # A request queues because the detector said saturated or others wait. A pass is
        # needed unless the last one found the detector saturated and the detector will
        # notify us when that changes.
        pass_needed = not self._core.saturated or self._detector.recheck_interval is not None
        return await self._wait(ticket, pass_needed=pass_needed)

    async def _wait(self, ticket: Ticket, *, pass_needed: bool) -> Ticket:
        """Wait for a queued ticket's dispatch; on any exception, leave the queue."""
        loop = self._loop
        assert loop is not None
        waiter = ticket._waiter = loop.create_future()
        if pass_needed:
            self._dispatch()
        # The armed timer already fires early enough unless this deadline is earlier.
        if (
            self._timer is None
            or min(ticket._expires_at or math.inf, ticket._no_endpoint_at or math.inf)
            < self._timer_at
        ):
            self._arm_timer()
        try:
            await waiter
        except BaseException:
            now = loop.time()
            # Leaving the queue can unblock others (it may have been the head that held
            # a pass at its band's ceiling), and may leave its flow idle: run a pass and
            # make sure collection is scheduled, as a release does.
            if self._core.cancel(ticket, now) or self._core.revoke(ticket, now, self._detector):
                self._dispatch()
                self._arm_collection()
            raise
        finally:
            # A failed future holds its exception, whose traceback holds this frame:
            # unlinked, a rejected or expired wait is freed by reference counting, not
            # left to the cyclic collector. The ticket needs no waiter once it is over.
            ticket._waiter = None
            del waiter
        ticket._handed_over = True
        return ticket

    async def requeue_and_wait(self, ticket: Ticket, *, preemptible: bool | None = None) -> Ticket:
        """Take an in-flight ticket back (preemption) and wait until it is dispatched again.

        For a request whose answer has not started: its slot goes to whoever waits
        first (the preempting request), and it waits again at the head of its flow's
        queue; its TTL starts again. The caller must have stopped its use of the slot
        (closed the upstream request) first. Returns the same ticket, dispatched again.
        `preemptible` (None: unchanged) replaces `Ticket.preemptible`, e.g. when the
        request may not be paused again.

        Raises:
            ValueError: the ticket is not in flight.
            TTLExpiredError: it waited its whole TTL again.
            ControllerClosedEvictedError: the controller closed while it waited.
        """
        loop = self._loop
        if preemptible is not None and ticket._state is State.DISPATCHED:
            ticket._preemptible = preemptible
        if loop is None or not self._core.requeue(ticket, loop.time(), self._detector):
            raise ValueError(f"{ticket!r} is not in flight")
        return await self._wait(ticket, pass_needed=True)

    @property
    def requeued(self) -> int:
        """Tickets taken back from flight and queued again since the start."""
        return self._core.requeued

    @property
    def dispatched(self) -> int:
        """Requests dispatched since the start (less those taken back); O(1)."""
        return self._core.outcomes[Outcome.DISPATCHED]

    def retry_reservations(self) -> dict[str, int]:
        """Places promised with Retry-After by full bands (`retry_reservations`), since
        the start: ``made`` = ``honoured`` + ``lapsed`` + ``outstanding``; ``refused``
        counts refusals that could promise nothing (band or table full)."""
        r = self._core.reservations
        return {
            "made": r.made,
            "honoured": r.honoured,
            "lapsed": r.lapsed,
            "refused": r.refused,
            "outstanding": r.outstanding,
        }

    def enqueue_nowait(
        self,
        key: FlowKey,
        *,
        size: int = 0,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> Ticket:
        """Dispatch at once, or raise: the request is never queued.

        It is dispatched when nothing waits in its band or above and the detector lets
        its band dispatch (below saturation and below the band's `max_utilization`).

        Args:
            key, size, input_tokens, output_tokens: as for `enqueue_and_wait`.

        Raises:
            WouldBlock: the request would have to wait; nothing is counted.
            ControllerClosedError: the controller is not running.
        """
        ticket = self._submit(key, size, None, None, input_tokens, output_tokens, nowait=True)
        ticket._handed_over = True
        return ticket

    @contextlib.asynccontextmanager
    async def admit(
        self,
        key: FlowKey,
        *,
        size: int = 0,
        ttl: float | None = None,
        slo: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> AsyncIterator[Ticket]:
        """`enqueue_and_wait`, then release the ticket when the block ends.

        Raises:
            The errors of `enqueue_and_wait`.
        """
        ticket = await self.enqueue_and_wait(
            key,
            size=size,
            ttl=ttl,
            slo=slo,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        try:
            yield ticket
        finally:
            ticket.release()

    def _submit(
        self,
        key: FlowKey,
        size: int,
        ttl: float | None,
        slo: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        *,
        nowait: bool = False,
        claim: Callable[[], Hashable] | None = None,
        preemptible: bool = False,
    ) -> Ticket:
        if not isinstance(key, FlowKey):
            raise TypeError(f"key must be a FlowKey, got {key!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds (or None, or math.inf), got {ttl!r}")
        if slo is not None and not slo >= 0:
            raise ValueError(f"slo must be >= 0 seconds, got {slo!r}")
        for name, tokens in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if tokens is not None and (
                not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0
            ):
                raise ValueError(f"{name} must be an int >= 0, got {tokens!r}")
        if not self._running:
            raise self._core.reject_closed()
        try:
            ticket = self._core.submit(
                key,
                size,
                ttl,
                slo,
                self._now(),
                self._detector,
                input_tokens,
                output_tokens,
                nowait=nowait,
                claim=claim,
                preemptible=preemptible,
            )
        except RejectedError:
            self._arm_collection()
            raise
        ticket._owner = self
        displaced = self._core.take_displaced()
        if displaced:
            for victim in displaced:
                self._fail(victim)
            self._arm_collection()
        return ticket

    def _record_usage(
        self, ticket: Ticket, input_tokens: int | None, output_tokens: int | None, final: bool, /
    ) -> None:
        self._core.record_usage(ticket, input_tokens, output_tokens, self._now(), final=final)

    def _release(self, ticket: Ticket, /) -> None:
        if self._core.release(ticket, self._now(), self._detector):
            self._dispatch()
            self._arm_collection()

    def _arm_collection(self) -> None:
        # A flow that just went idle may be due before the armed timer (a short
        # flow_idle_timeout behind a long TTL); `_arm_timer` moves it only if so.
        if self._running:
            self._arm_timer()

    # -- band set and configuration ----------------------------------------------------

    def reconcile_priorities(self, desired: Iterable[int]) -> None:
        """Make the band set follow `desired`.

        Missing bands are created from their template. A band that is neither static,
        desired nor 0 is removed once it holds no queued or in-flight request (at once
        if it is empty now); until then it keeps serving what it holds.

        Raises:
            ValueError: a priority is not an int.
        """
        priorities = list(desired)
        for p in priorities:
            if not isinstance(p, int) or isinstance(p, bool):
                raise ValueError(f"priorities must be ints, got {p!r}")
        self._core.reconcile(priorities)
        self._after_change()

    def reconfigure(self, config: FlowControlConfig) -> None:
        """Adopt a new configuration without dropping queued or in-flight requests.

        New limits apply to new admissions; requests already queued stay queued even
        if they are now over a lowered limit.
        """
        if not isinstance(config, FlowControlConfig):
            raise TypeError(f"config must be a FlowControlConfig, got {config!r}")
        self._core.reconfigure(config, self._now())
        self._after_change()
        if self._running:
            self._arm_timer()  # a band no longer static may now be collectable

    def queued_requests(self, priority: int | None = None) -> int:
        """Requests waiting in band `priority` (0 if it has no band), or in all bands.

        O(1), from counters: cheap enough for every rejection (Retry-After), unlike
        `statistics()`, which scans every queued request.
        """
        core = self._core
        if priority is None:
            return core.queued_requests
        band = core.registry.bands.get(priority)
        return 0 if band is None else band.queued_requests

    def holds_slot(self, ticket: Ticket, held: bool) -> None:
        """Tell demand headroom whether the dispatched preemptible `ticket` holds its
        slot (a paused request that lent it holds none the top band could reclaim)."""
        self._core.holds_slot(ticket, held)

    def leaves_headroom(self, priority: int, preemptible: bool = False) -> bool:
        """Whether taking one more slot at `priority` now leaves the bands above it the
        free slots demand headroom keeps for them (True with `demand_headroom` off);
        `preemptible`: the slot goes to work the top band can pause (see
        `enqueue_and_wait`), which may use its reserve down to the idle part."""
        return self._core.leaves_headroom(self._detector, priority, preemptible)

    def estimate_wait(self, priority: int) -> tuple[float | None, int]:
        """(estimated seconds a new request at `priority` would wait, its queue position).

        From the pool's drain rate and the work queued in its band and above (see
        `FlowControlConfig.early_reject`); the wait is None until the drain rate is
        known. O(bands): cheap enough for every rejection (Retry-After).
        """
        return self._core.estimate_wait(priority)

    def statistics(self) -> ControllerStatistics:
        """A frozen, exact snapshot of bands, flows, counters and outcomes."""
        return self._core.statistics(self._now() if self._loop is not None else None)

    def summary(self, flows: int) -> ControllerStatistics:
        """`statistics()` with only the `flows` largest flows (most queued requests, then
        most in flight) in its ``flows``; every other figure is exact and complete.

        For operations pages with many tenants: choosing the flows is one pass over
        their counters, and only the chosen are snapshotted (``len(bands[p].flows)``
        still counts them all).
        """
        if not isinstance(flows, int) or isinstance(flows, bool) or flows < 0:
            raise ValueError(f"flows must be an int >= 0, got {flows!r}")
        return self._core.statistics(self._now() if self._loop is not None else None, flows)

    def flow_statistics(self, priority: int, flow_id: str) -> FlowStatistics | None:
        """The snapshot of the flow `flow_id` in band `priority`, or None; O(1)."""
        return self._core.flow_statistics(priority, flow_id)

    # -- events -----------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _after_change(self) -> None:
        if self._running:
            self._dispatch()

    def _on_saturation_change(self) -> None:
        # May be called from inside the detector, even during a pass: defer.
        if not self._kicked and self._running and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._on_kick)

    def _on_kick(self) -> None:
        self._kicked = False
        if not self._running:
            return
        has_endpoints = self._detector.has_endpoints()
        lost: list[Ticket] = []
        if self._had_endpoints and not has_endpoints:
            lost = self._core.endpoints_lost(self._now())
            for ticket in lost:
                self._fail(ticket)
        self._had_endpoints = has_endpoints
        self._dispatch()
        if lost:
            self._arm_collection()  # their flows may be idle now

    def _dispatch(self) -> None:
        """Run dispatch passes until nothing changes; re-entrant calls fold in."""
        if self._in_pass:
            self._again = True
            return
        if not self._running:
            return
        self._in_pass = True
        try:
            again = True
            while again:
                self._again = False
                again = self._hand_over(self._core.dispatch(self._now(), self._detector))
                again = again or self._again
        finally:
            self._in_pass = False
        if self._core.blocked and self._detector.recheck_interval is not None:
            self._arm_timer()

    def _hand_over(self, dispatched: list[Ticket]) -> bool:
        """Resume each dispatched request's waiter. A ticket whose waiter is gone (or
        already done) is revoked, so its slot is not lost; the rest of the batch is
        resumed regardless. Returns True if a slot was given back (run another pass)."""
        revoked = False
        for ticket in dispatched:
            waiter = ticket._waiter
            if waiter is None or waiter.done():
                revoked = self._core.revoke(ticket, self._now(), self._detector) or revoked
                continue
            waiter.set_result(ticket)
        return revoked

    def _arm_timer(self) -> None:
        at = self._core.next_deadline()
        if self._core.blocked and (interval := self._detector.recheck_interval) is not None:
            recheck = self._now() + interval
            at = recheck if at is None else min(at, recheck)
        if at is None or at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        # The loop runs a timer up to its clock resolution early: expire what was due at
        # `at`, or the re-armed timer would fire again at once, and spin until the clock
        # passes `at` (forever on a virtual clock).
        now = max(self._now(), self._timer_at)
        self._timer = None
        self._timer_at = math.inf
        if not self._running:
            return
        for ticket in self._core.expire(now, self._detector):
            self._fail(ticket)
        self._dispatch()
        self._arm_timer()

    def _fail(self, ticket: Ticket) -> None:
        waiter = ticket._waiter
        if waiter is None or waiter.done():
            return
        if ticket.outcome is Outcome.EVICTED_DISPLACED:
            # O(bands), paid only by displaced requests: when their band may take them.
            wait, _ = self._core.estimate_wait(ticket.priority)
            advice = None if wait is None else advised_seconds(wait)
            waiter.set_exception(DisplacedError(_displaced(ticket), retry_after=advice))
            return
        waiter.set_exception(_error_for(ticket))

    def __repr__(self) -> str:
        core = self._core
        state = "running" if self._running else ("closed" if core.closed else "idle")
        return (
            f"<FlowController {state} [bands: {len(core.registry.bands)} | queued:"
            f" {core.queued_requests} | in flight: {core.in_flight}] {self._detector!r}>"
        )


def _log_fault(message: str, error: BaseException | None) -> None:
    """The core's plugin failures (isolated and counted there) are logged here."""
    _log.error(message, exc_info=error)


def _displaced(ticket: Ticket) -> str:
    return f"{ticket.key} waited, then made room for a higher-priority request"


def _error_for(ticket: Ticket) -> EvictedError:
    waited = f"{ticket.key} waited"
    if ticket.outcome is Outcome.EVICTED_TTL:
        ttl = (ticket.expires_at or 0.0) - ticket.arrival
        return TTLExpiredError(f"{waited} its whole TTL ({ttl:.3f} s) without capacity")
    if ticket.outcome is Outcome.EVICTED_NO_ENDPOINTS:
        return NoEndpointsEvictedError(f"{waited} its no-endpoint TTL with no backend available")
    return ControllerClosedEvictedError(f"{waited}, then the flow controller closed")
