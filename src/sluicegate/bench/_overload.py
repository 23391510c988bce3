"""Part 4: overload quality. The simulator at 1x and 2x its capacity, flow control on and off.

Each run starts a fresh stack (`sluicegate.testbed.demo_stack`: simulators and the gateway in
this process, on loopback) and replays the same seeded plan: the demo's three objectives
(interactive / standard / batch) spread round-robin over equal tenants. "Off" is the same
gateway with a concurrency limit no run reaches, so both pay the same proxy cost. A first
run with interactive requests only, at a low rate on an idle stack, gives the unloaded
baseline. With ``--target URL`` the simulators listen on fixed ports
(``--backend-port`` and up), which the other gateway must forward to, and the same plans
go to it.

Every run is bounded: arrivals last `duration`, open requests get `grace_s`, then end
``Unfinished`` (and count in TTFT percentiles with their wait so far).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, final

from sluicegate.sim import create_app, serve_many
from sluicegate.testbed import (
    DEMO_OBJECTIVES,
    DEMO_SIM,
    Workload,
    demo_stack,
    estimate_capacity,
    run_traffic,
)

from ._figures import PartResult
from ._load import equal_tenants, plan_equal_tenants, run_closed_loop
from ._quality import quality_figures, run_figures, runs_tables
from ._stats import Slo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sluicegate.sim import SimConfig
    from sluicegate.testbed import PlannedRequest, RequestRecord

__all__ = ["DEFAULT_SLOS", "OverloadOptions", "Run", "run_overload", "run_overload_runs"]

#: A mode of a run: flow control on or off, or the other gateway (``--target``).
RunMode = Literal["on", "off", "target"]
#: Goodput objectives per request objective: TTFT, and TPOT (mean inter-token latency).
#: The simulator needs ~45 ms to a first token and 10-20 ms per token (docs/sim.md).
DEFAULT_SLOS: Final = {
    "interactive": Slo(ttft_s=0.5, itl_s=0.05),
    "standard": Slo(ttft_s=2.0, itl_s=0.05),
    "batch": Slo(ttft_s=10.0, itl_s=0.05),
}


@final
@dataclass(frozen=True, slots=True)
class OverloadOptions:
    """What part 4 runs.

    Attributes:
        duration: seconds of arrivals per loaded run.
        grace_s: seconds open requests get after the last arrival.
        baseline_s: seconds of the unloaded baseline.
        baseline_rate: interactive requests/s of the baseline.
        loads: offered loads, as multiples of the estimated capacity.
        backends: simulators.
        tenants: equal tenants.
        seed: seeds the plans and the simulators.
        arrivals: ``poisson`` (open loop) or ``closed`` (load x batch slots users).
        target: another gateway's base URL, run beside ours.
        backend_port: first simulator port with `target` (the others follow).
        sim: the simulators' configuration.
        slos: the goodput objectives by objective name.
    """

    duration: float = 30.0
    grace_s: float = 6.0
    baseline_s: float = 5.0
    baseline_rate: float = 5.0
    loads: tuple[float, ...] = (0.7, 1.0, 2.0)
    backends: int = 3
    tenants: int = 4
    seed: int = 0
    arrivals: Literal["poisson", "closed"] = "poisson"
    target: str | None = None
    backend_port: int = 18100
    sim: SimConfig = DEMO_SIM
    slos: dict[str, Slo] = field(default_factory=lambda: dict(DEFAULT_SLOS))

    @property
    def workload(self) -> Workload:
        """The demo's objectives over equal tenants."""
        return equal_tenants(DEMO_OBJECTIVES, self.tenants)

    @property
    def capacity(self) -> float:
        """Estimated requests/s the simulators complete with this mix."""
        return estimate_capacity(self.workload, self.sim, self.backends)

    @property
    def modes(self) -> tuple[RunMode, ...]:
        """The modes of each load, in run order."""
        return ("on", "off", "target") if self.target else ("on", "off")


@final
@dataclass(slots=True)
class Run:
    """One run: what was offered and every request's record.

    Attributes:
        label: e.g. ``"2x, flow control on"``.
        load: the offered load (0 for the unloaded baseline).
        mode: ``on``, ``off`` or ``target``.
        rate: offered requests/s (open loop) or users (closed loop).
        duration: seconds of arrivals.
        started_at: loop time the arrivals started.
        records: one per sent request.
        wall_s: seconds the run took, stack start and stop included.
    """

    label: str
    load: float
    mode: RunMode
    rate: float
    duration: float
    started_at: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0


@contextlib.asynccontextmanager
async def _endpoint(mode: RunMode, options: OverloadOptions) -> AsyncIterator[str]:
    """A fresh stack for `mode`; yields the URL the load goes to."""
    if mode == "target":
        assert options.target is not None
        apps = [
            create_app(options.sim.replace(seed=options.seed + i)) for i in range(options.backends)
        ]
        ports = [options.backend_port + i for i in range(options.backends)]
        async with serve_many(apps, "127.0.0.1", ports):
            yield options.target.rstrip("/")
        return
    async with demo_stack(
        mode,
        backends=options.backends,
        sim=options.sim,
        workload=options.workload,
        seed=options.seed,
    ) as stack:
        yield stack.url


async def _measure(run: Run, plan: tuple[PlannedRequest, ...], options: OverloadOptions) -> Run:
    began = time.monotonic()
    async with _endpoint(run.mode, options) as url:
        loop = asyncio.get_running_loop()
        run.started_at = loop.time()
        if options.arrivals == "closed" and run.load > 0:
            run.records = await run_closed_loop(
                url,
                plan,
                users=int(run.rate),
                model=options.sim.model,
                duration=run.duration,
                grace_s=options.grace_s,
            )
        else:
            run.records = await run_traffic(
                url,
                plan,
                model=options.sim.model,
                stop=asyncio.Event(),  # never set: every run ends by its own bounds
                grace_s=options.grace_s,
            )
    run.wall_s = time.monotonic() - began
    return run


def _label(load: float, mode: RunMode) -> str:
    what = {"on": "flow control on", "off": "flow control off", "target": "target"}[mode]
    return f"{load:g}x, {what}"


def _offered(options: OverloadOptions, load: float) -> float:
    """Requests/s (open loop), or users = load x batch slots (closed loop)."""
    if options.arrivals == "closed":
        return round(load * options.backends * options.sim.max_num_seqs)
    return load * options.capacity


async def run_overload_runs(options: OverloadOptions) -> tuple[list[Run], dict[RunMode, Run]]:
    """The baselines (one per gateway measured), then every load x mode, interleaved.

    Returns:
        The loaded runs in run order, and the unloaded baseline of each gateway mode
        (``on`` for ours, ``target`` for the other one).
    """
    workload = options.workload
    solo = Workload(workload.objectives[:1], workload.tenants)
    base_plan = plan_equal_tenants(
        solo, rate=options.baseline_rate, duration=options.baseline_s, seed=options.seed
    )
    baselines: dict[RunMode, Run] = {}
    for mode in ("on", "target") if options.target else ("on",):
        run = Run(f"unloaded, {mode}", 0.0, mode, options.baseline_rate, options.baseline_s)
        baselines[mode] = await _measure(run, base_plan, options)
    runs: list[Run] = []
    for load in options.loads:
        rate = _offered(options, load)
        plan_rate = rate if options.arrivals == "poisson" else 4 * options.capacity * load
        plan = plan_equal_tenants(
            workload, rate=plan_rate, duration=options.duration, seed=options.seed
        )
        for mode in options.modes:
            run = Run(_label(load, mode), load, mode, rate, options.duration)
            runs.append(await _measure(run, plan, options))
    return runs, baselines


#: What the figures of this part do and do not show.
_NOTES: Final = (
    "With flow control on, the gateway runs on its defaults (no saturation, headroom or "
    "batch size set): it learns each simulator's batch size from time to first token, "
    "holds back capacity for the top band by its recent demand, and may pause a running "
    "batch stream for an interactive request (resumed later, nothing lost); the rest wait "
    "at the gateway, highest priority first. That is why interactive TTFT at 2x stays near "
    "the unloaded value. Without flow control the same request queues inside an engine "
    "behind everything that arrived before it.",
    "The tenants offer equal load, so first-come-first-served is fair to them too: the "
    "index shows that flow control does not skew their shares. Fairness under unequal "
    "demand is the subject of docs/fairness.md.",
    "Below saturation the concurrency limit is rarely reached, so the work-conservation "
    "ratio shows that holding requests back at the limit does not leave capacity idle.",
    "TTFT and E2E in the latency table cover completed requests only, as vLLM's benchmark "
    "does; the interactive TTFT figures also count starved requests (lower bounds).",
)


def _run_loop(options: OverloadOptions) -> tuple[list[Run], dict[RunMode, Run]]:
    """Run on uvloop where there is one, as the gateway does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a server extra
        return asyncio.run(run_overload_runs(options))
    return uvloop.run(run_overload_runs(options))


def run_overload(options: OverloadOptions, *, command: str) -> PartResult:
    """Part 4: run everything and build the report section.

    Raises:
        OSError: a port cannot be bound.
    """
    began = time.monotonic()
    runs, baselines = _run_loop(options)
    tenants = [t.name for t in options.workload.tenants]
    base_figs = {m: run_figures(r, tenants, options.slos) for m, r in baselines.items()}
    figs = [run_figures(r, tenants, options.slos) for r in runs]
    arrivals = (
        f"open loop, Poisson arrivals at load x {options.capacity:.1f} requests/s (the "
        "estimated capacity)"
        if options.arrivals == "poisson"
        else "closed loop, load x batch slots users"
    )
    slos = ", ".join(f"{name} TTFT <= {s.ttft_s:g} s" for name, s in options.slos.items())
    return PartResult(
        part="overload",
        title="4. Overload quality (flow control on vs off)",
        command=command,
        method=(
            f"{options.backends} simulators ({options.sim.max_num_seqs} sequences, "
            f"{options.sim.kv_cache_size:,}-token KV cache each) behind the gateway, all in one "
            f"process on loopback; {arrivals}; loads {list(options.loads)}; "
            f"{options.duration:g} s of arrivals per run + {options.grace_s:g} s grace; "
            f"the demo's mix (interactive 25 %, standard 45 %, batch 30 %) over "
            f"{options.tenants} equal tenants (round-robin). Unloaded baseline: interactive "
            f"only at {options.baseline_rate:g}/s for {options.baseline_s:g} s. Goodput: "
            f"completed requests meeting {slos} and TPOT <= "
            f"{max(s.itl_s for s in options.slos.values()) * 1e3:g} ms, per second of "
            "arrivals. Jain's index and throughput: output tokens streamed per tenant during "
            "the arrival window."
        ),
        figures=quality_figures(figs, base_figs),
        tables=runs_tables([*base_figs.values(), *figs]),
        notes=list(_NOTES),
        seconds=time.monotonic() - began,
        raw={
            "capacity_rps": options.capacity,
            "baselines": {m: f.to_json() for m, f in base_figs.items()},
            "runs": [
                f.to_json() | {"wall_s": r.wall_s, "rate": r.rate}
                for f, r in zip(figs, runs, strict=True)
            ],
        },
    )
