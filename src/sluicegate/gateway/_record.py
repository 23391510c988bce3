"""What one request went through: its classification, pool, outcome and timings.

The record is plain data, separate from the I/O (`_proxy.Exchange` sends and receives;
the handlers and the relay fill this in). Every time in it is read from one clock,
`now` (``time.perf_counter``), so the figures it feeds (the queue-time and
added-latency histograms, the ``x-sluicegate-queue-ms`` header) never mix two clocks,
whatever the outcome.

Why not the loop clock: uvloop's ``loop.time()`` advances in whole milliseconds
(libuv's ``uv_now``), too coarse for an added latency of a tenth of one. On Linux
``perf_counter`` reads ``CLOCK_MONOTONIC``, the timeline the loop clock truncates, so
the two never disagree by more than that millisecond.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import sluicegate as sg

from ._errors import GatewayOutcome, RequestOutcome

if TYPE_CHECKING:
    from ._classify import Classification
    from ._pool import Pool

__all__ = ["RequestRecord", "now"]

#: The record's clock (seconds; see the module docstring).
now: Final = time.perf_counter


_DISPATCHED: Final = sg.Outcome.DISPATCHED


@final
@dataclass(slots=True)
class RequestRecord:
    """One request's path through the gateway (seconds on the `now` clock throughout).

    Attributes:
        arrived_at: when the handler got the request.
        outcome: how it left flow control (`GatewayOutcome.BYPASSED` until it does).
        classification: its flow, priority and deadlines, once classified.
        pool: the pool it was routed to.
        enqueued_at: when it started to wait in flow control; None while not waiting.
        queue_s: seconds it waited in flow control.
        eta_s: the controller's estimate of that wait, when it was queued.
        backend: the base URL relayed to (last attempt).
        upstream_error: the kind of upstream failure (see `_upstream`), if one happened.
        upstream_s: seconds from sending upstream to the backend's answer starting.
        first_byte_at: when the response's first byte went to the client.
    """

    arrived_at: float
    outcome: RequestOutcome = GatewayOutcome.BYPASSED
    classification: Classification | None = None
    pool: Pool | None = None
    enqueued_at: float | None = None
    queue_s: float = 0.0
    eta_s: float | None = None
    backend: str | None = None
    upstream_error: str | None = None
    upstream_s: float = 0.0
    first_byte_at: float | None = None

    @property
    def dispatched(self) -> bool:
        """It left flow control dispatched (it may still fail upstream)."""
        return self.outcome is _DISPATCHED

    def left_queue(self) -> None:
        """It stopped waiting in flow control (dispatched, refused, evicted, or its
        client left): the wait so far is its queue time."""
        if self.enqueued_at is not None:
            self.queue_s = now() - self.enqueued_at
            self.enqueued_at = None

    def added_s(self) -> float | None:
        """The gateway's own share of the time to the first byte (queueing and the
        backend's time taken out), or None before a first byte."""
        if self.first_byte_at is None:
            return None
        added = self.first_byte_at - self.arrived_at - self.queue_s - self.upstream_s
        return added if added > 0.0 else 0.0
