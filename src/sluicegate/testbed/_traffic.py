"""The open-loop traffic generator and its latency accounting.

Two layers, as in the core library:

* `StreamMeter` and `RequestRecord` are sans-I/O: they are fed bytes and loop times and
  never read a clock, so the accounting (TTFT from the first streamed token, gaps between
  tokens, end-to-end time) is tested with literal times.
* `run_traffic` sends a `PlannedRequest` sequence through aiohttp at the planned offsets,
  whatever the answers (open loop: a slow server does not slow the arrivals).

Invariant: every request that was sent ends with exactly one outcome (`RequestRecord.finish`
refuses a second one), so the outcome counts of a run always add up to the requests sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import orjson

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._workload import PlannedRequest

__all__ = [
    "CLIENT_OUTCOMES",
    "COMPLETED",
    "FAILED",
    "UNFINISHED",
    "RequestRecord",
    "StreamMeter",
    "classify_outcome",
    "request_body",
    "run_traffic",
    "send_request",
]

#: The stream ended with ``data: [DONE]`` after a 200.
COMPLETED: Final = "Completed"
#: A transport error, an upstream error, or a stream cut short.
FAILED: Final = "Failed"
#: Still running when the run was cut off (its end plus the grace period, or Ctrl-C).
UNFINISHED: Final = "Unfinished"
#: The outcomes decided by the client; the gateway's refusals keep its labels
#: (``RejectedCapacity``, ``EvictedTTL``, ...) from the `x-sluicegate-outcome` header.
CLIENT_OUTCOMES: Final = (COMPLETED, FAILED, UNFINISHED)

_DATA: Final = b"data:"
_DONE: Final = b"[DONE]"


@final
class StreamMeter:
    """Times the tokens of one SSE stream from the bytes as they arrive.

    A token is a chunk whose first choice carries non-empty ``delta.content`` (chat) or
    ``text`` (completions); the role-only first chunk of a chat stream and the usage
    chunk are not tokens. Tokens arriving in one read share its arrival time, as the
    client saw them.

    Attributes:
        first_token_at: arrival time of the first token, or None.
        last_token_at: arrival time of the latest token, or None.
        tokens: tokens seen so far.
        gaps: arrival-time differences between consecutive tokens (seconds).
        usage_tokens: ``usage.completion_tokens`` from the usage chunk, if one came.
        done: ``data: [DONE]`` was seen.
        error: the ``code`` of an ``error`` event (the gateway ended the stream: evicted,
            or paused past its TTL), else None.
    """

    __slots__ = (
        "_buffer",
        "done",
        "error",
        "first_token_at",
        "gaps",
        "last_token_at",
        "tokens",
        "usage_tokens",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.tokens = 0
        self.gaps: list[float] = []
        self.usage_tokens: int | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Account for `data` received at loop time `now`.

        Raises:
            ValueError: an event's data is not JSON.
        """
        self._buffer += data
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(_DATA):
                    self._on_data(line[len(_DATA) :].strip(), now)

    def _on_data(self, payload: bytes, now: float) -> None:
        if payload == _DONE:
            self.done = True
            return
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a stream event is not JSON: {payload[:80]!r}") from exc
        error = doc.get("error")
        if isinstance(error, dict):
            self.error = str(error.get("code"))
            return
        usage = doc.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        choices = doc.get("choices")
        if not choices:
            return
        choice = choices[0]
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            self._token(now)

    def _token(self, now: float) -> None:
        if self.last_token_at is None:
            self.first_token_at = now
        else:
            self.gaps.append(now - self.last_token_at)
        self.last_token_at = now
        self.tokens += 1


@final
@dataclass(slots=True)
class RequestRecord:
    """What happened to one sent request. Times are loop times.

    Attributes:
        planned: the plan entry it came from.
        sent_at: when the request was sent.
        meter: the token timings of its stream.
        status: the HTTP status, once headers arrived.
        gateway_outcome: the `x-sluicegate-outcome` header, if any.
        queue_ms: the `x-sluicegate-queue-ms` header, if any.
        outcome: how it ended (set once, by `finish`).
        finished_at: when it ended.
        error: a short description for failed requests.
    """

    planned: PlannedRequest
    sent_at: float
    meter: StreamMeter = field(default_factory=StreamMeter)
    status: int | None = None
    gateway_outcome: str | None = None
    queue_ms: float | None = None
    outcome: str | None = None
    finished_at: float | None = None
    error: str | None = None

    def finish(self, outcome: str, now: float, error: str | None = None) -> None:
        """Record how the request ended.

        Raises:
            RuntimeError: it already ended (a bug: each request has one outcome).
        """
        if self.outcome is not None:
            raise RuntimeError(f"request {self.planned.index} already ended as {self.outcome}")
        self.outcome = outcome
        self.finished_at = now
        self.error = error

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first streamed token."""
        first = self.meter.first_token_at
        return None if first is None else first - self.sent_at

    @property
    def e2e(self) -> float | None:
        """Seconds from sending to the end, for completed requests."""
        if self.outcome != COMPLETED or self.finished_at is None:
            return None
        return self.finished_at - self.sent_at

    @property
    def itl(self) -> float | None:
        """Mean seconds between tokens after the first (None with fewer than 2 tokens)."""
        gaps = self.meter.gaps
        return sum(gaps) / len(gaps) if gaps else None


def classify_outcome(
    status: int, gateway_outcome: str | None, stream_done: bool
) -> tuple[str, str | None]:
    """The outcome of a request that got a response, and an error text if it failed.

    Refusals keep the gateway's label (429 ``RejectedCapacity``, 503 ``EvictedTTL``...);
    a 200 is `COMPLETED` only if its stream ended with ``[DONE]``.
    """
    if status == 200:
        return (COMPLETED, None) if stream_done else (FAILED, "stream ended before [DONE]")
    if gateway_outcome and gateway_outcome != "Dispatched":
        return gateway_outcome, f"HTTP {status}"
    return FAILED, f"HTTP {status}"


def request_body(planned: PlannedRequest, model: str) -> bytes:
    """The streamed chat request for `planned` (4 characters per prompt token, as the
    simulator counts them)."""
    prompt = f"{planned.tenant} {planned.index} " + "word " * planned.prompt_tokens
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt[: planned.prompt_tokens * 4]}],
            "max_tokens": planned.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


def _headers(planned: PlannedRequest) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-gateway-inference-fairness-id": planned.tenant,
        "x-gateway-inference-objective": planned.objective,
    }


async def send_request(
    session: aiohttp.ClientSession, url: str, model: str, record: RequestRecord
) -> None:
    """Send one request and account for its stream; always ends the record."""
    loop = asyncio.get_running_loop()
    planned = record.planned
    try:
        async with session.post(
            url, data=request_body(planned, model), headers=_headers(planned)
        ) as resp:
            record.status = resp.status
            record.gateway_outcome = resp.headers.get("x-sluicegate-outcome")
            queue_ms = resp.headers.get("x-sluicegate-queue-ms")
            record.queue_ms = float(queue_ms) if queue_ms else None
            async for chunk in resp.content.iter_any():
                record.meter.feed(chunk, loop.time())
        error: str | None
        if resp.status == 200 and record.meter.error is not None:
            outcome, error = FAILED, f"stream ended with an error event ({record.meter.error})"
        else:
            outcome, error = classify_outcome(
                resp.status, record.gateway_outcome, record.meter.done
            )
        record.finish(outcome, loop.time(), error)
    except asyncio.CancelledError:
        # Cut off by the end of the run or Ctrl-C: counted, then cancelled as asked.
        record.finish(UNFINISHED, loop.time())
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.finish(FAILED, loop.time(), f"{type(exc).__name__}: {exc}"[:200])


async def run_traffic(
    url: str,
    plan: Sequence[PlannedRequest],
    *,
    model: str,
    stop: asyncio.Event,
    grace_s: float,
    on_sent: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send `plan` to `url`'s chat endpoint open-loop, then wait for the answers.

    Arrivals stop at the end of the plan or when `stop` is set; requests still open
    `grace_s` later (or at once if `stop` is set) are cancelled and end `UNFINISHED`.

    Args:
        url: the gateway's base URL.
        plan: the requests, by increasing `at`.
        model: the model name to ask for.
        stop: set it to stop sending and cut the run short.
        grace_s: seconds to wait for open requests after the last arrival.
        on_sent: called with each record as its request is sent.

    Returns:
        One record per sent request, in sending order, each with its outcome.
    """
    loop = asyncio.get_running_loop()
    endpoint = url + "/v1/chat/completions"
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            async with asyncio.TaskGroup() as tg:
                start = loop.time()
                for planned in plan:
                    if not await _sleep_until(start + planned.at, stop):
                        break
                    record = RequestRecord(planned, loop.time())
                    records.append(record)
                    tasks.append(tg.create_task(send_request(session, endpoint, model, record)))
                    if on_sent is not None:
                        on_sent(record)
                await _wait_open(tasks, loop.time() + grace_s, stop)
                for task in tasks:
                    task.cancel()
        finally:
            # Also on our own cancellation: no request task outlives the run.
            for task in tasks:
                task.cancel()
    return records


async def _sleep_until(deadline: float, stop: asyncio.Event) -> bool:
    """Wait until `deadline`; False if `stop` was set first."""
    if stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await stop.wait()
    return not stop.is_set()


async def _wait_open(tasks: list[asyncio.Task[None]], deadline: float, stop: asyncio.Event) -> None:
    """Wait for the open requests until `deadline`, or until `stop` is set."""
    pending: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
    if not pending or stop.is_set():
        return
    stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while pending and not stopper.done():
                    _, pending = await asyncio.wait(
                        pending | {stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending.discard(stopper)
    finally:
        stopper.cancel()
        await asyncio.wait({stopper})
