"""Queue events: feedback on the open stream while a streamed request waits (issue 15).

A streamed request (``"stream": true``) sent with ``x-sluicegate-queue-events: 1`` that
has to wait in flow control gets its response headers at once (200,
``text/event-stream``) and then SSE comment lines, at most one a second::

    : queued position=12 eta_ms=840

SSE clients ignore comment lines (the OpenAI SDKs do), so the model's events that follow
read as an ordinary stream. A request dispatched on arrival sends nothing early: its
answer is as without the header.

The status is gone once the headers are out. A request that then fails before any model
byte -- refused or evicted while waiting (TTL, displacement, shutdown), an upstream
error, a backend's error status -- ends its stream with a comment carrying what the
status line would have (``: outcome=EvictedTTL status=503``, and ``retry_after=N`` for a
429) and an OpenAI-shaped SSE ``error`` event (``data: {"error": {...}}``), on which
the OpenAI SDKs raise.

"Started" stays what it was: `Exchange.started` is set by the first byte of the
backend's answer, not by the headers and comments sent here (`Exchange.preamble` says
those went out). So a request taken back before its answer started (preemptive requeue,
`_preempt.py`) may still be, even after its comments: its stream so far holds only
comments, which stay valid before whatever the next dispatch sends.

Mechanics. No task or timer per request: the waiting requests that opted in sit in one
insertion-ordered table; one loop timer, armed only while the table is not empty, wakes
at the earliest due time and one writer task sends what is due (headers at once, a
comment every `interval`), one request after the other. A request leaving the table
(dispatched, failed, gone) first waits for a send to it in progress, so a comment can
never land inside the backend's answer; a send waits at most one interval for a client
that does not read, so one stuck client cannot hold back the others' comments.

The position and wait are estimates: the position it had when it was queued (the work
at its priority and above), less the requests the pool has dispatched since, and at most
what the controller would give a new arrival now; the wait is that position at the
controller's drain rate (`FlowController.estimate_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from ._errors import GatewayError, error_reply

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import sluicegate as sg

    from ._proxy import Exchange

__all__ = [
    "QUEUE_EVENTS_HEADER",
    "QueueEvents",
    "preamble_continues",
    "sse_failure",
    "wants_queue_events",
]

_log = logging.getLogger("sluicegate.gateway")

QUEUE_EVENTS_HEADER: Final = b"x-sluicegate-queue-events"
#: Seconds between two comments to one request.
INTERVAL: Final = 1.0
PREAMBLE_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied answers unless told not to; comments held back are useless.
    (b"x-accel-buffering", b"no"),
    (QUEUE_EVENTS_HEADER, b"1"),
)


def wants_queue_events(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the client asked for queue events (``x-sluicegate-queue-events: 1``)."""
    for name, value in headers:
        if name == QUEUE_EVENTS_HEADER:
            return value.strip() in (b"1", b"true")
    return False


def sse_failure(
    exc: Exception, *, queue_ms: float, retry_after: int | None = None
) -> tuple[int, bytes]:
    """(status, the SSE bytes ending a stream that has sent only queue events): a
    comment with what the status line would have said, then an OpenAI-shaped ``error``
    event (the same JSON an error status would carry)."""
    status, body, headers = error_reply(exc, queue_ms=queue_ms, retry_after=retry_after)
    named = dict(headers)
    note = b": outcome=" + named.get(b"x-sluicegate-outcome", b"-") + b" status=%d" % status
    if b"retry-after" in named:
        note += b" retry_after=" + named[b"retry-after"]
    return status, note + b"\n\ndata: " + body + b"\n\n"


def preamble_continues(status: int) -> None:
    """The backend's answer after a preamble: a success goes on in the open stream;
    any other status cannot be sent any more and becomes an error (then an SSE error
    event, `sse_failure`).

    Raises:
        GatewayError: `status` is not a success.
    """
    if 200 <= status < 300:
        return
    raise GatewayError(
        502 if status >= 500 else status,
        f"the backend answered HTTP {status} after the queue events began",
        type="server_error" if status >= 500 else "invalid_request_error",
        code="upstream_status",
    )


@final
@dataclass(slots=True, eq=False)
class _Waiting:
    ex: Exchange
    controller: sg.FlowController
    priority: int
    #: Its position when queued, and the pool's dispatch count then.
    position: int
    dispatched: int
    due: float
    sending: asyncio.Future[None] | None = None


@final
class QueueEvents:
    """The waiting requests that asked for queue events, and the one timer and writer
    that keep them informed."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._waiting: dict[Exchange, _Waiting] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._writer: asyncio.Task[None] | None = None
        #: Comments sent, for the metrics and tests.
        self.comments = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def around(
        self, ex: Exchange, controller: sg.FlowController, priority: int, *, stream: bool
    ) -> contextlib.AbstractAsyncContextManager[None] | None:
        """`waiting` for a streamed request that asked for queue events, else None."""
        if stream and wants_queue_events(ex.scope["headers"]):
            return self.waiting(ex, controller, priority)
        return None

    @contextlib.asynccontextmanager
    async def waiting(
        self, ex: Exchange, controller: sg.FlowController, priority: int
    ) -> AsyncIterator[None]:
        """Inform `ex`'s client while the block (the wait in flow control) runs. The
        headers go out at the next loop iteration, so a request dispatched on arrival
        (the block returning without suspending) sends nothing early."""
        loop = asyncio.get_running_loop()
        _, position = controller.estimate_wait(priority)
        entry = _Waiting(ex, controller, priority, position, controller.dispatched, loop.time())
        self._waiting[ex] = entry
        self._arm(loop, entry.due)
        try:
            yield
        finally:
            del self._waiting[ex]
            if entry.sending is not None and not entry.sending.done():
                await asyncio.shield(entry.sending)
            if not self._waiting and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Make the timer fire no later than `at` (one timer for all)."""
        if self._writer is not None or (self._timer is not None and self._timer_at <= at):
            return  # the running writer re-arms when it ends; or already early enough
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        if self._waiting and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Send what is due, then arm the timer for the next due time."""
        loop = asyncio.get_running_loop()
        try:
            now = loop.time()
            for entry in [e for e in self._waiting.values() if e.due <= now]:
                if entry.ex not in self._waiting:
                    continue  # left while an earlier one was being written
                entry.due = now + self.interval
                entry.sending = loop.create_future()
                try:
                    # A client that does not read (its socket full) must not stall the
                    # others: its comment waits at most one interval.
                    async with asyncio.timeout(self.interval):
                        await self._send(entry)
                except Exception:  # a client gone or stuck: its own handler finds out
                    _log.debug("queue event not sent", exc_info=True)
                finally:
                    entry.sending.set_result(None)
                    entry.sending = None
        finally:
            self._writer = None
            if self._waiting:
                self._arm(loop, min(e.due for e in self._waiting.values()))

    async def _send(self, entry: _Waiting) -> None:
        ex = entry.ex
        if not ex.preamble:
            await ex.open_preamble(list(PREAMBLE_HEADERS))
        controller = entry.controller
        wait, now_position = controller.estimate_wait(entry.priority)
        served = controller.dispatched - entry.dispatched
        position = max(1, min(entry.position - served, now_position))
        line = f": queued position={position}"
        if wait is not None:
            line += f" eta_ms={wait * position / now_position * 1000.0:.0f}"
        await ex.chunk(line.encode() + b"\n\n")
        self.comments += 1
