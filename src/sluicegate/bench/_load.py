"""The load generator of part 4: the testbed's open-loop sender, plus a closed-loop one.

* **Open loop** (Poisson arrivals): `sluicegate.testbed.run_traffic` sends a seeded plan at its
  planned offsets whatever the answers, so a slow server does not slow the arrivals.
* **Closed loop**: `run_closed_loop` keeps `users` requests open; each user sends the next
  request of the plan as soon as its previous one ended, until `duration` has passed.

Both account for every request with the testbed's `RequestRecord` (TTFT from the first
streamed token, every inter-token gap, end-to-end time, exactly one outcome), so the
statistics of `_stats` apply to either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import TYPE_CHECKING

import aiohttp

from sluicegate.testbed import RequestRecord, Tenant, Workload, plan_traffic, send_request

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sluicegate.testbed import Objective, PlannedRequest

__all__ = ["equal_tenants", "plan_equal_tenants", "run_closed_loop"]


def equal_tenants(objectives: Sequence[Objective], tenants: int) -> Workload:
    """The objectives with `tenants` tenants of equal weight (``tenant-0``, ...)."""
    return Workload(tuple(objectives), tuple(Tenant(f"tenant-{i}", 1.0) for i in range(tenants)))


def plan_equal_tenants(
    workload: Workload, *, rate: float, duration: float, seed: int
) -> tuple[PlannedRequest, ...]:
    """A seeded Poisson plan whose requests go to the tenants in turn.

    Round-robin assignment, rather than a random draw, gives every tenant the same number
    of requests of each objective within one, so the offered load is equal and Jain's
    index measures the gateway, not the draw.
    """
    plan = plan_traffic(workload, rate=rate, duration=duration, seed=seed)
    names = [t.name for t in workload.tenants]
    counts: dict[str, int] = {}
    out = []
    for planned in plan:
        # Per objective, so each tenant also gets the same mix.
        n = counts.get(planned.objective, 0)
        counts[planned.objective] = n + 1
        out.append(dataclasses.replace(planned, tenant=names[n % len(names)]))
    return tuple(out)


async def run_closed_loop(
    url: str,
    plan: Sequence[PlannedRequest],
    *,
    users: int,
    model: str,
    duration: float,
    grace_s: float,
) -> list[RequestRecord]:
    """Send `plan` in order with `users` requests open at a time, for `duration` seconds.

    A user whose request ended sends the next one at once; after `duration` no request
    starts, open ones get `grace_s` more, then are cancelled (they end ``Unfinished``).
    The plan's offsets are ignored; it is a source of request shapes (make it long enough).

    Returns:
        One record per sent request, in sending order, each with its outcome.
    """
    loop = asyncio.get_running_loop()
    endpoint = url + "/v1/chat/completions"
    records: list[RequestRecord] = []
    source = iter(plan)
    stop_at = loop.time() + duration

    async def user(session: aiohttp.ClientSession) -> None:
        for planned in source:
            if loop.time() >= stop_at:
                return
            record = RequestRecord(planned, loop.time())
            records.append(record)
            await send_request(session, endpoint, model, record)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(user(session)) for _ in range(users)]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(stop_at + grace_s):
                    await asyncio.gather(*tasks)
        finally:
            # Also on our own cancellation: no request outlives the run. A cancelled user
            # ends its open record as Unfinished (in `send_request`).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return records
