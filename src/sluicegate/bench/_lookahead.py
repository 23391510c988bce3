"""Part 6 (issue 15): admission that looks ahead, measured at 2x overload.

Two runs of the same seeded plan, at `load` x the estimated capacity, through the demo's
flow-control-on gateway (part 4's stack). The clients send their objective's TTFT goal
as ``x-slo-ttft-ms`` (part 4's goodput objectives) and, on a 429 with ``Retry-After``,
wait that long and retry once.

* ``shadow``: early rejection off. Every dispatched answer carries the queue wait the
  controller predicted when it queued the request (``x-sluicegate-queue-eta-ms``) and
  the actual one (``x-sluicegate-queue-ms``): the calibration. The requests the rule
  *would* have refused (predicted wait > SLO x (1 + margin)) that in fact started
  within their SLO are the false rejects.
* ``on``: early rejection on (the default): how many were refused at once, and how
  often a client that waits the advised Retry-After gets in on its first retry.
* ``reservations off``: as ``on`` but a full band's 429 promises nothing
  (``retry_reservations: false``): the same-run baseline of first-retry success, and of
  what the promises cost fresh arrivals (first attempts admitted, requests served).

Only retries sent while arrivals last count (after that the queue empties and any
retry gets in).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp

from sluicegate.gateway import serve_in_background
from sluicegate.sim import create_app, serve_many
from sluicegate.testbed import (
    DEMO_OBJECTIVES,
    DEMO_SIM,
    demo_gateway_config,
    estimate_capacity,
    percentile,
    request_body,
)

from ._figures import Figure, PartResult, Target
from ._load import equal_tenants, plan_equal_tenants
from ._overload import DEFAULT_SLOS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from sluicegate.sim import SimConfig
    from sluicegate.testbed import PlannedRequest

__all__ = ["LookaheadOptions", "run_lookahead"]

_HOST: Final = "127.0.0.1"
#: The gateway's default `early_reject_margin`.
_MARGIN: Final = 0.25
#: Smallest share of its objective's TTFT goal a client asks for.
_SLO_MIN_FACTOR: Final = 0.05


@final
@dataclass(frozen=True, slots=True)
class LookaheadOptions:
    """What part 6 runs: part 4's stack and mix at one overload."""

    duration: float = 30.0
    grace_s: float = 6.0
    load: float = 2.0
    backends: int = 3
    tenants: int = 4
    seed: int = 0
    sim: SimConfig = DEMO_SIM
    #: Also run closed loop (load x batch slots users, each waiting for its answer,
    #: and for Retry-After before its retry), early rejection off and on.
    closed_loop: bool = True


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt: what the gateway answered."""

    sent_at: float
    status: int | None = None
    outcome: str | None = None
    queue_ms: float | None = None
    eta_ms: float | None = None
    retry_after: float | None = None
    #: The 429 promised a place after its Retry-After (``x-sluicegate-retry-reserved``).
    reserved: bool = False


@dataclass(slots=True)
class Sent:
    """One planned request: its first attempt and its retry, if any."""

    planned: PlannedRequest
    slo_ms: float
    first: Attempt | None = None
    retry: Attempt | None = None


@dataclass(slots=True)
class LookaheadRun:
    label: str
    early_reject: bool
    closed: bool = False
    reservations: bool = True
    started_at: float = 0.0
    sent: list[Sent] = field(default_factory=list)


def _slo_ms(planned: PlannedRequest, seed: int) -> float:
    """The request's `x-slo-ttft-ms`: its objective's TTFT goal times a seeded factor in
    [`_SLO_MIN_FACTOR`, 1], so some deadlines are tight enough to be refused."""
    factor = random.Random(seed * 1_000_003 + planned.index).uniform(_SLO_MIN_FACTOR, 1.0)
    return DEFAULT_SLOS[planned.objective].ttft_s * 1000.0 * factor


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempt: Attempt,
) -> Attempt:
    """Send once and fill in `attempt` as the answer comes (a cut-off one keeps what
    arrived: its headers, if any)."""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            attempt.status = resp.status
            h = resp.headers
            attempt.outcome = h.get("x-sluicegate-outcome")
            attempt.queue_ms = _number(h.get("x-sluicegate-queue-ms"))
            attempt.eta_ms = _number(h.get("x-sluicegate-queue-eta-ms"))
            attempt.retry_after = _number(h.get("retry-after"))
            attempt.reserved = h.get("x-sluicegate-retry-reserved") == "1"
            async for _ in resp.content.iter_any():
                pass
    except (aiohttp.ClientError, TimeoutError):
        pass
    return attempt


async def _client(
    session: aiohttp.ClientSession, url: str, model: str, sent: Sent, until: float
) -> None:
    planned = sent.planned
    body = request_body(planned, model)
    headers = {
        "content-type": "application/json",
        "x-gateway-inference-fairness-id": planned.tenant,
        "x-gateway-inference-objective": planned.objective,
        "x-slo-ttft-ms": f"{sent.slo_ms:.0f}",
    }
    loop = asyncio.get_running_loop()
    sent.first = first = Attempt(loop.time())
    await _attempt(session, url, body, headers, first)
    wait = first.retry_after
    if first.status == 429 and wait is not None and loop.time() + wait <= until:
        await asyncio.sleep(wait)
        sent.retry = Attempt(loop.time())
        await _attempt(session, url, body, headers, sent.retry)


@contextlib.asynccontextmanager
async def _stack(
    options: LookaheadOptions, *, early_reject: bool, reservations: bool = True
) -> AsyncIterator[str]:
    """Part 4's flow-control-on stack, with early rejection and retry reservations on
    or off."""
    sim = options.sim
    apps = [create_app(sim.replace(seed=options.seed + i)) for i in range(options.backends)]
    async with serve_many(apps, _HOST, [0] * options.backends) as urls:
        workload = equal_tenants(DEMO_OBJECTIVES, options.tenants)
        config = demo_gateway_config("on", urls, workload)
        flow_control = dataclasses.replace(
            config.flow_control, early_reject=early_reject, retry_reservations=reservations
        )
        config = config.model_copy(update={"flow_control": flow_control})
        async with serve_in_background(config) as gateway:
            yield str(gateway.url).rstrip("/")


async def _measure(
    run: LookaheadRun, plan: Sequence[PlannedRequest], options: LookaheadOptions
) -> None:
    loop = asyncio.get_running_loop()
    async with (
        _stack(options, early_reject=run.early_reject, reservations=run.reservations) as url,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        ) as session,
    ):
        endpoint = url + "/v1/chat/completions"
        start = run.started_at = loop.time()
        until = start + options.duration
        if run.closed:
            await _closed_loop(session, endpoint, run, plan, options, until)
            return
        tasks: list[asyncio.Task[None]] = []
        try:
            for planned in plan:
                await asyncio.sleep(max(0.0, start + planned.at - loop.time()))
                sent = Sent(planned, _slo_ms(planned, options.seed))
                run.sent.append(sent)
                tasks.append(
                    asyncio.create_task(_client(session, endpoint, options.sim.model, sent, until))
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.grace_s):
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _closed_loop(
    session: aiohttp.ClientSession,
    endpoint: str,
    run: LookaheadRun,
    plan: Sequence[PlannedRequest],
    options: LookaheadOptions,
    until: float,
) -> None:
    """`load x batch slots` users, each sending its next request once the last one ended
    (after its one retry, if refused); the plan is a source of request shapes."""
    loop = asyncio.get_running_loop()
    source = iter(plan)

    async def user() -> None:
        for planned in source:
            if loop.time() >= until:
                return
            sent = Sent(planned, _slo_ms(planned, options.seed))
            run.sent.append(sent)
            await _client(session, endpoint, options.sim.model, sent, until)

    users = round(options.load * options.backends * options.sim.max_num_seqs)
    tasks = [asyncio.create_task(user()) for _ in range(users)]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until + options.grace_s):
                await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _runs(options: LookaheadOptions) -> list[LookaheadRun]:
    workload = equal_tenants(DEMO_OBJECTIVES, options.tenants)
    rate = options.load * estimate_capacity(workload, options.sim, options.backends)
    plan = plan_equal_tenants(workload, rate=rate, duration=options.duration, seed=options.seed)
    runs = [
        LookaheadRun("open loop, early rejection off", False),
        LookaheadRun("open loop", True),
        LookaheadRun("open loop, reservations off", True, reservations=False),
    ]
    if options.closed_loop:
        runs += [
            LookaheadRun("closed loop, early rejection off", False, closed=True),
            LookaheadRun("closed loop", True, closed=True),
            LookaheadRun("closed loop, reservations off", True, closed=True, reservations=False),
        ]
    # Closed loop: the plan is only a source of shapes; make it long enough (as part 4).
    shapes = plan_equal_tenants(
        workload, rate=4 * rate, duration=options.duration, seed=options.seed
    )
    for run in runs:
        await _measure(run, shapes if run.closed else plan, options)
    return runs


def calibration(run: LookaheadRun) -> dict[str, Any]:
    """Predicted vs actual queue wait of the dispatched first attempts, and the false
    rejects: would-be early rejects (by the rule) that started within their SLO."""
    errors: list[float] = []
    actual: list[float] = []
    would_reject = false_rejects = 0
    for sent in run.sent:
        first = sent.first
        if first is None or first.eta_ms is None or first.queue_ms is None:
            continue
        if first.outcome != "Dispatched":
            continue
        errors.append(first.eta_ms - first.queue_ms)
        actual.append(first.queue_ms)
        if first.eta_ms > sent.slo_ms * (1.0 + _MARGIN):
            would_reject += 1
            false_rejects += first.queue_ms <= sent.slo_ms
    absolute = [abs(e) for e in errors]
    return {
        "predicted": len(errors),
        "abs_error_p50_ms": percentile(absolute, 50) if absolute else 0.0,
        "abs_error_p90_ms": percentile(absolute, 90) if absolute else 0.0,
        "signed_error_p50_ms": percentile(errors, 50) if errors else 0.0,
        "actual_wait_p50_ms": percentile(actual, 50) if actual else 0.0,
        "would_reject": would_reject,
        "false_rejects": false_rejects,
        "false_reject_share": false_rejects / would_reject if would_reject else 0.0,
    }


def retries(run: LookaheadRun) -> dict[str, Any]:
    """First retries after Retry-After sent while arrivals lasted, and how many got in
    (were not refused again)."""
    retried = [s for s in run.sent if s.retry is not None and s.retry.status is not None]
    tried = [s.retry for s in retried if s.retry is not None]
    got_in = sum(a.status != 429 for a in tried)
    promised = [s.retry for s in retried if s.first is not None and s.first.reserved]
    promised_in = sum(a is not None and a.status != 429 for a in promised)
    outcomes: dict[str, int] = {}
    answered = first_in = served = 0
    for sent in run.sent:
        first = sent.first
        if first is None or first.status is None:
            continue
        answered += 1
        if first.outcome is not None:
            outcomes[first.outcome] = outcomes.get(first.outcome, 0) + 1
        first_in += first.status != 429
        retry = sent.retry
        served += first.status == 200 or (retry is not None and retry.status == 200)
    return {
        "retries": len(tried),
        "got_in": got_in,
        "share": got_in / len(tried) if tried else 0.0,
        "promised": len(promised),
        "promised_in": promised_in,
        "first_outcomes": outcomes,
        "answered": answered,
        "first_admitted_share": first_in / answered if answered else 0.0,
        "served_share": served / answered if answered else 0.0,
    }


def _figures(
    shadow: LookaheadRun, on: LookaheadRun, unreserved: LookaheadRun, arrivals: str
) -> list[Figure]:
    """The headline figures of one set of runs (early rejection off, on, on without
    retry reservations)."""
    cal = calibration(shadow)
    ret_on, ret_off = retries(on), retries(unreserved)
    early = ret_on["first_outcomes"].get("RejectedDeadline", 0)
    actual = "median actual queue wait, same run"
    return [
        Figure(
            f"{arrivals}: predicted vs actual queue wait, median |error|",
            cal["abs_error_p50_ms"],
            "ms",
            cal["actual_wait_p50_ms"],
            actual,
            note=f"signed median {cal['signed_error_p50_ms']:+.0f} ms; {cal['predicted']} waits",
        ),
        Figure(
            f"{arrivals}: predicted vs actual queue wait, p90 |error|",
            cal["abs_error_p90_ms"],
            "ms",
            cal["actual_wait_p50_ms"],
            actual,
        ),
        Figure(
            f"{arrivals}: false rejects (would-be early rejects that started within their SLO)",
            cal["false_reject_share"] * 100.0,
            "%",
            note=f"{cal['false_rejects']} of {cal['would_reject']} (early rejection off)",
            target=Target("<=", 5.0, "<= 5 %") if cal["would_reject"] else None,
        ),
        Figure(
            f"{arrivals}: early rejects",
            float(early),
            "requests",
            float(len(on.sent)),
            "requests sent",
        ),
        Figure(
            f"{arrivals}: first retry after Retry-After gets in",
            ret_on["share"] * 100.0,
            "%",
            ret_off["share"] * 100.0,
            "same, retry reservations off",
            target=Target(">=", 80.0, ">= 80 %") if ret_on["retries"] else None,
            note=(
                f"{ret_on['got_in']} of {ret_on['retries']} retries; reservations off: "
                f"{ret_off['got_in']} of {ret_off['retries']}"
            ),
        ),
        Figure(
            f"{arrivals}: first retry after a 429 that promised a place gets in",
            ret_on["promised_in"] / ret_on["promised"] * 100.0 if ret_on["promised"] else 0.0,
            "%",
            note=f"{ret_on['promised_in']} of {ret_on['promised']} such retries",
        ),
        Figure(
            f"{arrivals}: first attempts admitted (not 429)",
            ret_on["first_admitted_share"] * 100.0,
            "%",
            ret_off["first_admitted_share"] * 100.0,
            "same, retry reservations off",
            note=f"{ret_on['answered']} / {ret_off['answered']} answered first attempts",
        ),
        Figure(
            f"{arrivals}: requests served (200 on the first attempt or the retry)",
            ret_on["served_share"] * 100.0,
            "%",
            ret_off["served_share"] * 100.0,
            "same, retry reservations off",
        ),
    ]


def _raw(run: LookaheadRun) -> dict[str, Any]:
    return {
        "label": run.label,
        "sent": len(run.sent),
        "calibration": calibration(run),
        "retries": retries(run),
    }


def _run_loop(options: LookaheadOptions) -> list[LookaheadRun]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a server extra
        return asyncio.run(_runs(options))
    return uvloop.run(_runs(options))


def run_lookahead(options: LookaheadOptions, *, command: str) -> PartResult:
    """Part 6: every run and the report section.

    Raises:
        OSError: a port cannot be bound.
    """
    began = time.monotonic()
    runs = _run_loop(options)
    figures = _figures(runs[0], runs[1], runs[2], "open loop")
    if len(runs) == 6:
        figures += _figures(runs[3], runs[4], runs[5], "closed loop")
    slos = ", ".join(f"{name} {s.ttft_s:g} s" for name, s in DEFAULT_SLOS.items())
    return PartResult(
        part="lookahead",
        title="6. Admission that looks ahead (early rejection, Retry-After)",
        command=command,
        method=(
            f"Part 4's flow-control-on stack ({options.backends} simulators) at "
            f"{options.load:g}x the estimated capacity, Poisson, {options.duration:g} s of "
            f"arrivals + {options.grace_s:g} s grace, the demo mix over {options.tenants} "
            f"tenants. Clients send x-slo-ttft-ms (their objective's goal, {slos}, times "
            f"a seeded factor in [{_SLO_MIN_FACTOR:g}, 1], so some deadlines are tight) and "
            "retry once after Retry-After on a 429 (only retries sent while arrivals last "
            "count). Open loop: Poisson arrivals; closed loop: load x batch slots users, "
            "each waiting for its answer (and its retry) before the next request. Each "
            "runs three times on the same plan: early rejection off (predictions are "
            "still made and sent back), on (the default), and on with retry reservations "
            "off (a full band's 429 promises nothing: the baseline). Calibration covers "
            "dispatched requests that waited in the queue; a false reject is a request "
            f"the rule would have refused (predicted wait > SLO x {1 + _MARGIN:g}) whose "
            "actual queue wait was within its SLO."
        ),
        figures=figures,
        notes=[
            "The prediction is the work queued at the request's priority and above, "
            "divided by the pool's completion rate; it leaves out higher-priority "
            "arrivals during the wait, so it errs low (towards admitting).",
            "Retry reservations: a full band's 429 promises the refused flow a place "
            "after its Retry-After; fresh arrivals may not take promised places, so "
            "they are refused more often while promises are outstanding.",
        ],
        seconds=time.monotonic() - began,
        raw={"runs": [_raw(run) for run in runs]},
    )
