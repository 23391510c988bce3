"""Part 6 (issue 15): admission that looks ahead, measured at 2x overload.

Two runs of the same seeded plan, at `load` x the estimated capacity, through the demo's
flow-control-on gateway (part 4's stack). The clients send their objective's TTFT goal
as ``x-slo-ttft-ms`` (part 4's goodput objectives) and, on a 429, retry once with the
same body: after ``Retry-After`` when the 429 carries one (with retry reservations on,
a capacity refusal's promise, or an early rejection's or a displacement's estimate),
else after the OpenAI SDK's own first backoff (0.5 s less up to a
quarter of jitter; ``openai/_base_client.py`` ``_calculate_retry_timeout``).

* ``shadow``: early rejection off. Every dispatched answer carries the queue wait the
  controller predicted when it queued the request (``x-sluicegate-queue-eta-ms``) and
  the actual one (``x-sluicegate-queue-ms``): the calibration. The requests the rule
  *would* have refused (predicted wait > SLO x (1 + margin)) that in fact started
  within their SLO are the false rejects.
* ``on``: early rejection on (the default): how many were refused at once, how many
  429s carried a Retry-After, and how often a client that waits it gets in on its
  first retry.
* ``reservations off``: as ``on`` but a full band's 429 promises nothing and every 429
  carries the gateway's estimate as Retry-After (``retry_reservations: false``): the
  same-run baseline of first-retry success, and of what the promises cost fresh
  arrivals (first attempts admitted, requests served).

Every retry counts: a run goes on after its arrivals until the last advised retry has
come back (at most the 60 s horizon + twice the grace).
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
    from collections.abc import AsyncIterator, Iterator, Sequence

    from sluicegate.sim import SimConfig
    from sluicegate.testbed import PlannedRequest

__all__ = [
    "LookaheadOptions",
    "LookaheadRun",
    "calibration",
    "false_rejects",
    "run_lookahead",
    "shadow_run",
]

_HOST: Final = "127.0.0.1"
#: The gateway's default `early_reject_margin`.
_MARGIN: Final = 0.25
#: Smallest share of its objective's TTFT goal a client asks for.
_SLO_MIN_FACTOR: Final = 0.05
#: The OpenAI SDK's first retry delay without Retry-After (`openai/_constants.py`
#: INITIAL_RETRY_DELAY; it doubles to at most 8 s, with jitter).
_SDK_BACKOFF: Final = 0.5
#: The gateway's longest Retry-After: how long a run goes on after its arrivals so that
#: every advised retry comes back (plus the grace).
_RETRY_HORIZON: Final = 60.0


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
    #: What the 429's retry advice means (``x-sluicegate-retry``).
    retry_reason: str | None = None


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
    #: Clients retry once on a 429 (after Retry-After, else the SDK's backoff); the
    #: run then lasts until every retry came back (bounded).
    retrying: bool = True
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
            attempt.retry_reason = h.get("x-sluicegate-retry")
            async for _ in resp.content.iter_any():
                pass
    except (aiohttp.ClientError, TimeoutError):
        pass
    return attempt


async def _client(
    session: aiohttp.ClientSession, url: str, model: str, sent: Sent, retrying: bool
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
    if first.status != 429 or not retrying:
        return
    wait = first.retry_after
    if wait is None:  # the OpenAI SDK's own first backoff: 0.5 s x (1 - 0.25 x random)
        wait = _SDK_BACKOFF * (1.0 - 0.25 * random.Random(planned.index).random())
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
        # Every advised retry comes back within the horizon (plus its own wait).
        tail = options.grace_s + (_RETRY_HORIZON + options.grace_s if run.retrying else 0.0)
        if run.closed:
            await _closed_loop(session, endpoint, run, plan, options, (until, until + tail))
            return
        tasks: list[asyncio.Task[None]] = []
        try:
            for planned in plan:
                await asyncio.sleep(max(0.0, start + planned.at - loop.time()))
                sent = Sent(planned, _slo_ms(planned, options.seed))
                run.sent.append(sent)
                model = options.sim.model
                tasks.append(
                    asyncio.create_task(_client(session, endpoint, model, sent, run.retrying))
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(until + tail):
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
    bounds: tuple[float, float],
) -> None:
    """`load x batch slots` users, each sending its next request once the last one ended
    (after its one retry, if refused) until the first bound; the plan is a source of
    request shapes. The last retries may come back until the second bound."""
    loop = asyncio.get_running_loop()
    source = iter(plan)
    until, end = bounds

    async def user() -> None:
        for planned in source:
            if loop.time() >= until:
                return
            sent = Sent(planned, _slo_ms(planned, options.seed))
            run.sent.append(sent)
            await _client(session, endpoint, options.sim.model, sent, run.retrying)

    users = round(options.load * options.backends * options.sim.max_num_seqs)
    tasks = [asyncio.create_task(user()) for _ in range(users)]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(end):
                await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def open_loop_plan(options: LookaheadOptions) -> tuple[list[PlannedRequest], float]:
    """The seeded open-loop plan at `options.load` x the estimated capacity, and its rate."""
    workload = equal_tenants(DEMO_OBJECTIVES, options.tenants)
    rate = options.load * estimate_capacity(workload, options.sim, options.backends)
    plan = plan_equal_tenants(workload, rate=rate, duration=options.duration, seed=options.seed)
    return list(plan), rate


async def shadow_run(options: LookaheadOptions) -> LookaheadRun:
    """The open loop with early rejection off: predictions made, nothing refused early."""
    run = LookaheadRun("open loop, early rejection off", False, retrying=False)
    await _measure(run, open_loop_plan(options)[0], options)
    return run


async def _runs(options: LookaheadOptions) -> list[LookaheadRun]:
    workload = equal_tenants(DEMO_OBJECTIVES, options.tenants)
    plan, rate = open_loop_plan(options)
    runs = [
        LookaheadRun("open loop, early rejection off", False, retrying=False),
        LookaheadRun("open loop", True),
        LookaheadRun("open loop, reservations off", True, reservations=False),
    ]
    if options.closed_loop:
        runs += [
            LookaheadRun("closed loop, early rejection off", False, closed=True, retrying=False),
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


def _predicted(run: LookaheadRun) -> Iterator[tuple[Sent, float, float]]:
    """(request, predicted wait, actual wait) of each dispatched first attempt."""
    for sent in run.sent:
        first = sent.first
        if first is None or first.eta_ms is None or first.queue_ms is None:
            continue
        if first.outcome == "Dispatched":
            yield sent, first.eta_ms, first.queue_ms


def false_rejects(run: LookaheadRun) -> list[tuple[Sent, float, float]]:
    """(request, predicted wait, actual wait) of each false reject: the rule would have
    refused it (predicted wait > SLO x (1 + margin)), yet it started within its SLO."""
    return [
        (sent, eta_ms, queue_ms)
        for sent, eta_ms, queue_ms in _predicted(run)
        if eta_ms > sent.slo_ms * (1.0 + _MARGIN) and queue_ms <= sent.slo_ms
    ]


def calibration(run: LookaheadRun) -> dict[str, Any]:
    """Predicted vs actual queue wait of the dispatched first attempts, and the false
    rejects: would-be early rejects (by the rule) that started within their SLO."""
    errors: list[float] = []
    actual: list[float] = []
    would_reject = false_rejects = 0
    for sent, eta_ms, queue_ms in _predicted(run):
        errors.append(eta_ms - queue_ms)
        actual.append(queue_ms)
        if eta_ms > sent.slo_ms * (1.0 + _MARGIN):
            would_reject += 1
            false_rejects += queue_ms <= sent.slo_ms
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


def _came_back(group: Sequence[Sent]) -> list[Attempt]:
    return [s.retry for s in group if s.retry is not None and s.retry.status is not None]


def _tally(values: Sequence[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def retries(run: LookaheadRun) -> dict[str, Any]:
    """First retries and how many got in (were not refused again): after a Retry-After
    (``advised``) and after the SDK's own backoff (``unadvised``); the 429s' reasons."""
    refused = [s for s in run.sent if s.first is not None and s.first.status == 429]
    advised = [s for s in refused if s.first is not None and s.first.retry_after is not None]
    unadvised = [s for s in refused if s.first is not None and s.first.retry_after is None]
    back, back_bare = _came_back(advised), _came_back(unadvised)
    got_in = sum(a.status != 429 for a in back)
    # Early rejections and displacements advise an estimate, not a promise.
    estimated = _came_back([s for s in advised if s.first is not None and not s.first.reserved])
    answered = first_in = served = 0
    outcomes: dict[str, int] = {}
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
    failed = [a for a in back if a.status == 429]
    return {
        "refused": len(refused),
        "advised": len(advised),
        "advised_share": len(advised) / len(refused) if refused else 0.0,
        "retries": len(back),
        "not_back": len(advised) - len(back),
        "got_in": got_in,
        "share": got_in / len(back) if back else 0.0,
        "estimated_retries": len(estimated),
        "estimated_in": sum(a.status != 429 for a in estimated),
        "unadvised_retries": len(back_bare),
        "unadvised_in": sum(a.status != 429 for a in back_bare),
        "reasons": _tally([s.first.retry_reason for s in refused if s.first is not None]),
        "advised_retry_refusals": _tally([f"{a.outcome}/{a.retry_reason}" for a in failed]),
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
        *_retry_figures(ret_on, ret_off, arrivals),
    ]


def _retry_figures(ret_on: dict[str, Any], ret_off: dict[str, Any], arrivals: str) -> list[Figure]:
    """Retry-After (retry reservations on) against the same-run baseline (off)."""
    return [
        Figure(
            f"{arrivals}: first retry after a Retry-After gets in",
            ret_on["share"] * 100.0,
            "%",
            ret_off["share"] * 100.0,
            "same, reservations off (Retry-After: an estimate on every 429)",
            target=Target(">=", 80.0, ">= 80 %") if ret_on["retries"] else None,
            note=(
                f"{ret_on['got_in']} of {ret_on['retries']} retries "
                f"({ret_on['not_back']} advised did not come back); reservations off: "
                f"{ret_off['got_in']} of {ret_off['retries']}"
            ),
        ),
        Figure(
            f"{arrivals}: of those, after an estimate (early rejection, displacement)",
            _share(ret_on["estimated_in"], ret_on["estimated_retries"]),
            "%",
            note=f"{ret_on['estimated_in']} of {ret_on['estimated_retries']} retries",
        ),
        Figure(
            f"{arrivals}: 429s that carried a Retry-After (a promise or an estimate)",
            ret_on["advised_share"] * 100.0,
            "%",
            ret_off["advised_share"] * 100.0,
            "same, reservations off",
            note=f"{ret_on['advised']} of {ret_on['refused']}; reasons {ret_on['reasons']}",
        ),
        Figure(
            f"{arrivals}: first retry without Retry-After (the SDK's 0.5 s backoff) gets in",
            _share(ret_on["unadvised_in"], ret_on["unadvised_retries"]),
            "%",
            note=f"{ret_on['unadvised_in']} of {ret_on['unadvised_retries']} retries",
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


def _share(part: int, whole: int) -> float:
    return part / whole * 100.0 if whole else 0.0


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
            "retry once on a 429: after Retry-After when given, else after the OpenAI "
            "SDK's own first backoff (0.375-0.5 s); each run goes on until every retry "
            f"came back (at most {_RETRY_HORIZON:g} s + {2 * options.grace_s:g} s after "
            "its arrivals), so every advised retry counts. Open loop: Poisson "
            "arrivals; closed loop: load x batch slots users, "
            "each waiting for its answer (and its retry) before the next request. Each "
            "runs three times on the same plan: early rejection off (predictions are "
            "still made and sent back), on (the default), and on with retry reservations "
            "off (a full band's 429 promises nothing, every 429 carries the estimated "
            "delay as Retry-After: the baseline). Calibration covers "
            "dispatched requests that waited in the queue; a false reject is a request "
            f"the rule would have refused (predicted wait > SLO x {1 + _MARGIN:g}) whose "
            "actual queue wait was within its SLO."
        ),
        figures=figures,
        notes=[
            "The prediction is the work queued at the request's priority and above, "
            "divided by the pool's completion rate; it leaves out higher-priority "
            "arrivals during the wait, so it errs low (towards admitting).",
            "Retry reservations: a full band's 429 promises the refused request a place "
            "after its Retry-After; fresh arrivals may not take promised places, so "
            "they are refused more often while promises are outstanding. A 429 that "
            "cannot promise carries no Retry-After and says why (x-sluicegate-retry).",
        ],
        seconds=time.monotonic() - began,
        raw={"runs": [_raw(run) for run in runs]},
    )
