"""The engine model: continuous batching on the event-loop clock.

Theory of operation
-------------------
A request is a `SimRequest` that waits in the engine's queue (a heap keyed by priority,
then arrival) until a batch slot and enough KV cache are free. Admission is strictly in
queue order, as in vLLM: a head that does not fit blocks the ones behind it.

Once admitted, its first token is due `time_to_first_token + (prompt + generated) x
prefill_time_per_token` later, and each following token one decode step after the
previous one was *due* (not after it was emitted, so the schedule does not drift when the
process is busy). A decode step lasts `inter_token_latency x load`, where `load` grows
linearly from 1 with one running request to `time_factor_under_load` with a full batch.

Every running request owns one entry in a single heap of due times; one loop timer
(`loop.call_at`) is armed for the earliest. When it fires, the engine emits every token
that is due, finishes requests, admits waiting ones and re-arms. There is no task per
request and no ticker: an idle engine arms nothing.

KV cache: a running request holds `prompt + generated` tokens. A request asking for more
than the whole cache is refused at submission. When a token is due and the cache is full,
the engine preempts (vLLM's recompute preemption) the last admitted request (`fcfs`) or
the one with the largest priority value (`priority`): it returns to the waiting queue
with its tokens so far and is prefilled again when readmitted.

Prefix caching (`enable_prefix_caching`, see `_prefix`): a request submitted with its
text looks up the longest cached run of its leading blocks when it is admitted (again
after a preemption) and prefills only the rest; its full blocks, prompt and generated,
are cached while it runs and stay cached in free KV after it ends, until evicted.

Invariants (checked by the tests through `statistics()`):

1. `running <= max_num_seqs`.
2. `kv_used == sum(prompt + generated of running) <= kv_cache_size`.
3. A request is in exactly one of waiting, running, finished, aborted.
4. Every running, non-stalled request has exactly one live entry in the due-time heap;
   stale entries (aborted or preempted) are skipped lazily by their epoch.

The engine never reads a wall clock: all times are `loop.time()`, so looptime drives it
in virtual time, and for a given arrival sequence it is deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import heapq
import math
from typing import TYPE_CHECKING, Final, final

from ._errors import EngineClosedError, InvalidRequestError, WaitingQueueFullError
from ._metrics import EngineCounters
from ._prefix import BlockHasher, PrefixCache

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import SimConfig

__all__ = ["EngineStatistics", "RequestState", "SimEngine", "SimRequest"]

#: How early a due token may be emitted. uvloop's clock and timers have millisecond
#: resolution: without slack, a timer that fires a fraction of a millisecond before its
#: deadline would re-arm with a zero delay and spin until the clock ticks.
DEFAULT_TIMER_SLACK_S: Final = 0.001


class RequestState(enum.Enum):
    """Where a `SimRequest` is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclasses.dataclass(frozen=True, slots=True)
class EngineStatistics:
    """A snapshot of the engine, as `/metrics` reports it.

    `cached_blocks` counts the prefix cache's blocks (held by running requests or
    evictable); `evictable_blocks` those no running request holds, which occupy free KV.
    """

    running: int
    waiting: int
    kv_used_tokens: int
    kv_cache_size: int
    preemptions: int
    aborted: int
    cached_blocks: int = 0
    evictable_blocks: int = 0

    @property
    def kv_cache_usage(self) -> float:
        """KV cache usage, 0..1."""
        return self.kv_used_tokens / self.kv_cache_size


@final
class SimRequest:
    """One request inside the engine. Attributes are read-only outside the engine.

    Attributes:
        request_id: Arrival number, from 0.
        prompt_tokens: Prompt length in tokens.
        output_tokens: Tokens the request will generate before it finishes.
        priority: Lower is served first under the `priority` policy.
        finish_reason: `"length"` or `"stop"`, reported when it finishes.
        state: Current `RequestState`.
        generated: Tokens generated so far.
        arrival_at: Loop time of submission.
        admitted_at: Loop time of first admission, or None.
        first_token_at: Loop time the first token was due, or None.
        last_token_at: Loop time the latest token was due, or None.
        finished_at: Loop time the last token was due, or None.
        cached_tokens: Prompt tokens the prefix cache saved at its first admission
            (vLLM's `num_cached_tokens`, reported as `prompt_tokens_details`).
    """

    __slots__ = (
        "_blocks",
        "_epoch",
        "_held",
        "_key",
        "_stream",
        "_token_text",
        "_waiter",
        "admitted_at",
        "arrival_at",
        "cached_tokens",
        "continued",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "generated",
        "last_token_at",
        "output_tokens",
        "priority",
        "prompt_tokens",
        "request_id",
        "stall",
        "state",
    )

    def __init__(
        self,
        request_id: int,
        prompt_tokens: int,
        output_tokens: int,
        priority: int,
        finish_reason: str,
        arrival_at: float,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.priority = priority
        self.finish_reason = finish_reason
        self.arrival_at = arrival_at
        self.continued = False
        self.state = RequestState.WAITING
        self.generated = 0
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finished_at: float | None = None
        self.stall = False
        self.cached_tokens = 0
        self._blocks: BlockHasher | None = None
        self._token_text: Callable[[int], str] | None = None
        self._held = 0  # leading blocks of `_blocks` held in the prefix cache
        self._stream = True
        self._key = 0
        self._epoch = 0
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<SimRequest {self.request_id} {self.state.value} "
            f"{self.generated}/{self.output_tokens} tokens, prompt {self.prompt_tokens}>"
        )

    @property
    def done(self) -> bool:
        """True once finished or aborted."""
        return self.state is RequestState.FINISHED or self.state is RequestState.ABORTED

    @property
    def kv_tokens(self) -> int:
        """KV cache tokens this request holds while running."""
        return self.prompt_tokens + self.generated

    async def wait_progress(self, seen: int) -> int:
        """Wait until more than `seen` tokens exist or the request is done.

        Args:
            seen: Tokens the caller has already consumed.

        Returns:
            The number of tokens generated so far.
        """
        while self.generated <= seen and not self.done:
            await self._wait()
        return self.generated

    async def wait_done(self) -> None:
        """Wait until the request is finished or aborted."""
        while not self.done:
            await self._wait()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _notify(self, final_: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (final_ or self._stream):
            waiter.set_result(None)


@final
class SimEngine:
    """The simulated inference engine. See the module docstring for the model.

    Args:
        config: The simulator configuration (sizes, latencies, policy).
        timer_slack_s: How early a due token may be emitted (see DEFAULT_TIMER_SLACK_S);
            tests in virtual time pass 0 to get exact times.
    """

    def __init__(self, config: SimConfig, *, timer_slack_s: float = DEFAULT_TIMER_SLACK_S) -> None:
        self.config = config
        self.counters = EngineCounters()
        self._slack = timer_slack_s
        self._ttft_s = config.time_to_first_token / 1000.0
        self._itl_s = config.inter_token_latency / 1000.0
        self._prefill_s = config.prefill_time_per_token / 1000.0
        seqs = config.max_num_seqs
        self._load_slope = (config.time_factor_under_load - 1.0) / (seqs - 1) if seqs > 1 else 0.0
        self._by_priority = config.scheduling_policy == "priority"
        self._cache = PrefixCache(config.block_size) if config.enable_prefix_caching else None
        self._waiting: list[tuple[int, int, SimRequest]] = []  # (key, request_id, req)
        self._num_waiting = 0
        self._running: dict[int, SimRequest] = {}  # insertion order is admission order
        self._due: list[tuple[float, int, int, SimRequest]] = []  # (due_at, tie, epoch, req)
        self._tie = 0
        self._kv_used = 0
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._closed = False
        self._watchers: list[tuple[Callable[[EngineStatistics], bool], asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return (
            f"<SimEngine running={len(self._running)} waiting={self._num_waiting} "
            f"kv={self._kv_used}/{self.config.kv_cache_size}>"
        )

    def statistics(self) -> EngineStatistics:
        """Return a snapshot of the engine's state."""
        return EngineStatistics(
            running=len(self._running),
            waiting=self._num_waiting,
            kv_used_tokens=self._kv_used,
            kv_cache_size=self.config.kv_cache_size,
            preemptions=self.counters.preemptions,
            aborted=self.counters.aborted,
            cached_blocks=0 if self._cache is None else len(self._cache),
            evictable_blocks=0 if self._cache is None else self._cache.evictable_blocks,
        )

    async def wait_statistics(
        self, predicate: Callable[[EngineStatistics], bool]
    ) -> EngineStatistics:
        """Wait until `predicate(statistics())` holds; checked after every state change.

        Returns:
            The first statistics snapshot that satisfied `predicate`.
        """
        while not predicate(stats := self.statistics()):
            waiter = asyncio.get_running_loop().create_future()
            entry = (predicate, waiter)
            self._watchers.append(entry)
            try:
                await waiter
            finally:
                if entry in self._watchers:
                    self._watchers.remove(entry)
        return stats

    def _changed(self) -> None:
        stats = self.statistics()
        for predicate, waiter in self._watchers:
            if not waiter.done() and predicate(stats):
                waiter.set_result(None)

    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        *,
        priority: int = 0,
        finish_reason: str = "length",
        stream: bool = True,
        stall: bool = False,
        text: str | None = None,
        token_text: Callable[[int], str] | None = None,
        continued: bool = False,
    ) -> SimRequest:
        """Queue a request; it is admitted at once if a slot and KV are free.

        Args:
            prompt_tokens: Prompt length (>= 1).
            output_tokens: Tokens to generate (>= 1).
            priority: Lower first under the `priority` policy; ignored under `fcfs`.
            finish_reason: Reported by metrics when the request finishes.
            stream: Wake `wait_progress` on every token (False: only when done).
            stall: Hold a batch slot and KV but never produce a token.
            text: The prompt as rendered, for the prefix cache (ignored when it is off).
            token_text: The text of output token `i`, for the prefix cache.
            continued: It continues a final message (counted apart: see
                `EngineCounters.continued_prefill_tokens`).

        Returns:
            The request, to wait on and to `abort`.

        Raises:
            InvalidRequestError: Prompt + output exceed the whole KV cache.
            WaitingQueueFullError: It would wait and the waiting queue is full.
            EngineClosedError: The engine is closed.
        """
        if self._closed:
            raise EngineClosedError("the simulator is shutting down")
        if prompt_tokens + output_tokens > self.config.kv_cache_size:
            raise InvalidRequestError(
                f"prompt ({prompt_tokens}) + output ({output_tokens}) tokens exceed the "
                f"KV cache ({self.config.kv_cache_size} tokens)"
            )
        loop = self._loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        req = SimRequest(self._next_id, prompt_tokens, output_tokens, priority, finish_reason, now)
        self._next_id += 1
        req.stall, req._stream, req.continued = stall, stream, continued
        if self._cache is not None and text is not None and token_text is not None:
            req._blocks = BlockHasher(text, self._cache.block_size)
            req._token_text = token_text
        req._key = priority if self._by_priority else 0
        heapq.heappush(self._waiting, (req._key, req.request_id, req))
        self._num_waiting += 1
        self._admit(now)
        limit = self.config.max_waiting_queue_length
        if req.state is RequestState.WAITING and limit is not None and self._num_waiting > limit:
            req.state = RequestState.ABORTED  # lazily dropped from the heap
            self._num_waiting -= 1
            raise WaitingQueueFullError(f"the engine's waiting queue is full ({limit})")
        self._arm()
        if self._watchers:
            self._changed()
        return req

    def abort(self, req: SimRequest) -> None:
        """Remove `req` at once, freeing its slot and KV; a no-op once it is done."""
        if req.state is RequestState.WAITING:
            self._num_waiting -= 1  # its heap entry is skipped lazily
        elif req.state is RequestState.RUNNING:
            del self._running[req.request_id]
            self._kv_used -= req.kv_tokens
            self._release(req)
        else:
            return
        req.state = RequestState.ABORTED
        self.counters.aborted += 1
        req._notify(True)
        if self._loop is not None and not self._closed:
            self._admit(self._loop.time())
            self._arm()
        if self._watchers:
            self._changed()

    def close(self) -> None:
        """Abort every request and refuse new ones. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for req in [*self._running.values(), *(entry[2] for entry in self._waiting)]:
            self.abort(req)

    def _admit(self, now: float) -> None:
        waiting, running, limit = self._waiting, self._running, self.config.max_num_seqs
        while waiting and len(running) < limit:
            req = waiting[0][2]
            if req.state is not RequestState.WAITING:
                heapq.heappop(waiting)
                continue
            need = req.kv_tokens
            if self._kv_used + need > self.config.kv_cache_size:
                break  # the head blocks the queue, as in vLLM
            heapq.heappop(waiting)
            self._num_waiting -= 1
            self._start(req, need, now)

    def _start(self, req: SimRequest, need: int, now: float) -> None:
        req.state = RequestState.RUNNING
        req._epoch += 1
        self._running[req.request_id] = req
        self._kv_used += need
        first = req.admitted_at is None
        if first:
            req.admitted_at = now
            self.counters.queue_time.observe(now - req.arrival_at)
            self.counters.prompt_tokens += req.prompt_tokens
        hits = self._hold(req, need, first) if req._blocks is not None else 0
        if first and req.continued:
            self.counters.continued_prefill_tokens += need - hits
        if not req.stall:
            self._push(req, now + self._ttft_s + (need - hits) * self._prefill_s)

    def _hold(self, req: SimRequest, need: int, first: bool) -> int:
        """Look up and hold `req`'s cached blocks; return the prefill tokens they save."""
        cache, blocks = self._cache, req._blocks
        assert cache is not None
        assert blocks is not None
        size = cache.block_size
        # As vLLM: the last token is always computed, so a full hit still prefills one.
        hits = cache.cached_prefix(blocks.hashes, (need - 1) // size) * size
        cache.hold(blocks.hashes)
        req._held = len(blocks.hashes)
        if first:
            req.cached_tokens = hits
        self.counters.prefix_cache_queries += need
        self.counters.prefix_cache_hits += hits
        cache.evict_to(self.config.kv_cache_size - self._kv_used)
        return hits

    def _release(self, req: SimRequest) -> None:
        if req._held:
            assert self._cache is not None
            assert req._blocks is not None
            self._cache.release(req._blocks.hashes[: req._held])
            req._held = 0
            self._cache.evict_to(self.config.kv_cache_size - self._kv_used)

    def _push(self, req: SimRequest, due_at: float) -> None:
        self._tie += 1
        heapq.heappush(self._due, (due_at, self._tie, req._epoch, req))

    def _arm(self) -> None:
        if not self._due or self._closed:
            return
        due_at = self._due[0][0]
        if self._timer is not None:
            if self._timer_at <= due_at:
                return
            self._timer.cancel()
        assert self._loop is not None  # set by the first submit, before anything is due
        self._timer = self._loop.call_at(due_at, self._on_timer)
        self._timer_at = due_at

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time()
        due, horizon = self._due, now + self._slack
        if due and due[0][0] <= horizon:
            # How far behind its own schedule the process is (the benchmark's yardstick).
            self.counters.lag.observe(max(0.0, now - due[0][0]))
        while due and due[0][0] <= horizon:
            due_at, _, epoch, req = heapq.heappop(due)
            if epoch == req._epoch and req.state is RequestState.RUNNING:
                self._emit(req, due_at)
        self._admit(now)
        self._arm()
        if self._watchers:
            self._changed()

    def _emit(self, req: SimRequest, at: float) -> None:
        if self._kv_used >= self.config.kv_cache_size:
            victim = self._victim()
            self._preempt(victim)
            if victim is req:
                return
        req.generated += 1
        self._kv_used += 1
        if req._blocks is not None:
            self._grow(req)
        counters = self.counters
        counters.generation_tokens += 1
        if req.last_token_at is None:
            req.first_token_at = at
            counters.ttft.observe(at - req.arrival_at)
        else:
            counters.itl.observe(at - req.last_token_at)
        req.last_token_at = at
        if req.generated >= req.output_tokens:
            self._finish(req, at)
        else:
            self._push(req, at + self._itl_s * (1.0 + self._load_slope * (len(self._running) - 1)))
            req._notify(False)

    def _grow(self, req: SimRequest) -> None:
        """Cache the blocks `req`'s newest token completed; make room for its KV."""
        cache, blocks, token_text = self._cache, req._blocks, req._token_text
        assert cache is not None
        assert blocks is not None
        assert token_text is not None
        new = blocks.extend(token_text(req.generated - 1))
        if new:
            cache.hold(blocks.hashes[-new:])
            req._held = len(blocks.hashes)
        if cache.evictable_blocks:  # the token took one more slot of free KV
            cache.evict_to(self.config.kv_cache_size - self._kv_used)

    def _finish(self, req: SimRequest, at: float) -> None:
        del self._running[req.request_id]
        self._kv_used -= req.kv_tokens
        self._release(req)
        req.state = RequestState.FINISHED
        req.finished_at = at
        counters = self.counters
        counters.e2e.observe(at - req.arrival_at)
        counters.success[req.finish_reason] = counters.success.get(req.finish_reason, 0) + 1
        req._notify(True)

    def _victim(self) -> SimRequest:
        if self._by_priority:
            return max(self._running.values(), key=lambda r: (r.priority, r.request_id))
        return next(reversed(self._running.values()))

    def _preempt(self, req: SimRequest) -> None:
        del self._running[req.request_id]
        self._kv_used -= req.kv_tokens
        self._release(req)
        req.state = RequestState.WAITING
        req._epoch += 1  # invalidates its due-time entry
        heapq.heappush(self._waiting, (req._key, req.request_id, req))
        self._num_waiting += 1
        self.counters.preemptions += 1
