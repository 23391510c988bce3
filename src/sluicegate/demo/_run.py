"""Running the demo: an unloaded baseline, then the same seeded overload with flow control
on and off, each against a freshly started stack.

Stopping: `run_demo` watches a `stop` event (the CLI sets it on the first Ctrl-C or
SIGTERM). Arrivals stop, open requests are cancelled (they end ``Unfinished``), the stack
shuts down in order, no further run starts, and the caller still gets every figure
measured so far. Nothing here waits without a bound: arrivals end with the plan, open
requests get `grace_s`, and each stack's shutdown is bounded by its servers' grace.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

from sluicegate.testbed import (
    DEMO_SIM,
    HOST,
    Workload,
    demo_stack,
    estimate_capacity,
    plan_traffic,
    run_traffic,
)

from ._live import LiveView
from ._stats import RunResult

if TYPE_CHECKING:
    from rich.console import Console

    from sluicegate.sim import SimConfig
    from sluicegate.testbed import Mode, PlannedRequest, Stack

__all__ = ["DemoError", "DemoOptions", "DemoResult", "run_demo"]

#: Seconds between two samples of the system (and two redraws of the live view).
SAMPLE_EVERY_S: Final = 0.5
#: Requests per second of the unloaded baseline (interactive only): a few busy slots.
_BASELINE_RATE: Final = 5.0


class DemoError(Exception):
    """The demo cannot run as asked; the message says what to change."""


@final
@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `sluicegate demo` runs.

    Attributes:
        duration: seconds of traffic per run.
        backends: simulated model servers.
        load: offered load as a multiple of the estimated capacity.
        seed: seeds the traffic plan and the simulators.
        out: where the HTML report goes.
        compare: also run without flow control.
        baseline: first measure the unloaded interactive TTFT.
        port: the gateway's port (0 = a free one).
        sim: the simulators' configuration.
        workload: objectives and tenants.
    """

    duration: float = 40.0
    backends: int = 3
    load: float = 2.0
    seed: int = 0
    out: Path = Path("sluicegate-demo-report.html")
    compare: bool = True
    baseline: bool = True
    port: int = 0
    sim: SimConfig = DEMO_SIM
    workload: Workload = field(default_factory=Workload)

    @property
    def capacity(self) -> float:
        """Estimated requests per second the backends complete."""
        return estimate_capacity(self.workload, self.sim, self.backends)

    @property
    def rate(self) -> float:
        """Offered requests per second."""
        return self.capacity * self.load

    @property
    def grace_s(self) -> float:
        """Seconds open requests get after the last arrival of a run."""
        return min(max(self.duration * 0.15, 1.0), 6.0)

    @property
    def baseline_s(self) -> float:
        """Seconds of the unloaded baseline."""
        return min(max(self.duration / 8, 1.0), 5.0)


@final
@dataclass(slots=True)
class DemoResult:
    """The runs measured (possibly fewer than planned after Ctrl-C)."""

    options: DemoOptions
    baseline: RunResult | None = None
    runs: list[RunResult] = field(default_factory=list)
    interrupted: bool = False


async def _start(exits: contextlib.AsyncExitStack, mode: Mode, options: DemoOptions) -> Stack:
    """Enter `demo_stack` on `exits`, with a bind failure turned into advice.

    Raises:
        DemoError: a port cannot be bound.
    """
    cm = demo_stack(
        mode,
        backends=options.backends,
        sim=options.sim,
        workload=options.workload,
        port=options.port,
        seed=options.seed,
    )
    try:
        return await exits.enter_async_context(cm)
    except OSError as exc:
        where = f"{HOST}:{options.port}" if options.port else f"a free port on {HOST}"
        reason = exc.strerror or str(exc)
        # The gateway's and the simulator's binds already name the address.
        if not reason.startswith("cannot listen on"):
            reason = f"cannot listen on {where}: {reason}"
        raise DemoError(
            f"{reason}. Pass --port 0 (the default) to let the demo pick free ports."
        ) from exc


async def _sample_forever(stack: Stack, result: RunResult, view: LiveView | None) -> None:
    """Sample the stack every `SAMPLE_EVERY_S` until cancelled (by the end of the run)."""
    loop = asyncio.get_running_loop()
    tick = result.started_at
    while True:
        now = loop.time()
        sample = stack.sample(now - result.started_at)
        result.samples.append(sample)
        if view is not None:
            view.update(result, sample, now)
        tick += SAMPLE_EVERY_S
        await asyncio.sleep(max(tick - loop.time(), 0.0))


async def measure(
    mode: Mode,
    label: str,
    plan: tuple[PlannedRequest, ...],
    options: DemoOptions,
    *,
    duration: float,
    stop: asyncio.Event,
    view: LiveView | None,
) -> RunResult:
    """Run `plan` against a fresh stack and return what was measured.

    Raises:
        DemoError: the stack could not start.
    """
    async with contextlib.AsyncExitStack() as exits:
        stack = await _start(exits, mode, options)
        loop = asyncio.get_running_loop()
        result = RunResult(mode, label, duration, len(plan), started_at=loop.time())
        if view is not None:
            view.start(result)
        try:
            async with asyncio.TaskGroup() as tg:
                sampler = tg.create_task(_sample_forever(stack, result, view))
                try:
                    await run_traffic(
                        stack.url,
                        plan,
                        model=options.sim.model,
                        stop=stop,
                        grace_s=options.grace_s,
                        on_sent=result.records.append,
                    )
                finally:
                    sampler.cancel()
        finally:
            result.elapsed = loop.time() - result.started_at
            result.interrupted = stop.is_set()
            if view is not None:
                view.stop()
    return result


async def run_demo(options: DemoOptions, console: Console, stop: asyncio.Event) -> DemoResult:
    """The baseline and the runs `options` ask for, stopping early when `stop` is set.

    Args:
        options: what to run.
        console: where to print progress.
        stop: set it to stop early; the figures so far are returned.

    Raises:
        DemoError: a port cannot be bound.
    """
    demo = DemoResult(options)
    view = LiveView(console, options.workload)
    if options.baseline:
        interactive = options.workload.objectives[0]
        solo = Workload((interactive,), options.workload.tenants)
        plan = plan_traffic(
            solo, rate=_BASELINE_RATE, duration=options.baseline_s, seed=options.seed
        )
        console.print(
            f"Unloaded baseline: {len(plan)} {interactive.name} requests "
            f"over {options.baseline_s:.0f} s ..."
        )
        demo.baseline = await measure(
            "on", "unloaded", plan, options, duration=options.baseline_s, stop=stop, view=None
        )
    plan = plan_traffic(
        options.workload, rate=options.rate, duration=options.duration, seed=options.seed
    )
    for mode in ("on", "off") if options.compare else ("on",):
        if stop.is_set():
            break
        label = f"flow control {mode}"
        console.print(
            f"Run with {label}: {len(plan)} requests over {options.duration:.0f} s "
            f"({options.rate:.1f}/s, {options.load:g}x the estimated capacity of "
            f"{options.capacity:.1f}/s)"
        )
        run = await measure(
            mode, label, plan, options, duration=options.duration, stop=stop, view=view
        )
        demo.runs.append(run)
    demo.interrupted = stop.is_set()
    return demo
