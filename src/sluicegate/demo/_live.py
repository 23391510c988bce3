"""The live terminal view of a run (rich), and its plain-text twin for pipes and CI.

On a terminal, one `rich.live.Live` region is redrawn on every sample (twice a second):
the gateway's queue and in-flight count per band, the dispatch rate, the engines'
batch and queue, TTFT p50/p99 per priority so far (requests still waiting count with
their wait so far, as lower bounds), the outcomes so far and a progress bar. Redraws are
driven by the demo's sampler, not by rich's refresh thread, so nothing runs off the
event loop. When stdout is not a terminal, one plain line is printed every few seconds
instead, so CI logs stay readable.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Final, final

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sluicegate.testbed import COMPLETED, censored_percentile, ttft_samples

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from sluicegate.testbed import Sample, Workload

    from ._stats import RunResult

__all__ = ["LiveView"]

#: Seconds between two plain-text status lines when stdout is not a terminal.
_PLAIN_EVERY_S: Final = 5.0
#: Seconds over which the dispatch rate is averaged.
_RATE_WINDOW_S: Final = 2.0


def _dispatch_rate(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if s.t >= last.t - _RATE_WINDOW_S), samples[0])
    if last.t <= first.t:
        first = samples[-2]
    return (last.dispatched - first.dispatched) / max(last.t - first.t, 1e-9)


def _outcomes(result: RunResult) -> Counter[str]:
    return Counter(r.outcome for r in result.records if r.outcome is not None)


def _fmt_pct(samples: list[tuple[float, bool]], q: float) -> str:
    found = censored_percentile(samples, q)
    return "-" if found is None else found.format_ms()


@final
class LiveView:
    """Shows runs as they happen on `console`.

    Args:
        console: where to draw; a non-terminal console gets plain lines.
        workload: names the bands after their objectives.
    """

    def __init__(self, console: Console, workload: Workload) -> None:
        self._console = console
        self._workload = workload
        self._live: Live | None = None
        self._last_plain = -_PLAIN_EVERY_S

    @property
    def interactive(self) -> bool:
        """True when drawing a live region (stdout is a terminal)."""
        return self._console.is_terminal

    def start(self, result: RunResult) -> None:
        """A run begins."""
        self._last_plain = -_PLAIN_EVERY_S
        if self.interactive:
            self._live = Live(console=self._console, auto_refresh=False, transient=False)
            self._live.start()
        else:
            self._console.print(
                f"[{result.label}] running for {result.duration:.0f} s", markup=False
            )

    def update(self, result: RunResult, sample: Sample, now: float) -> None:
        """Redraw with the latest `sample`; `now` is the loop time."""
        if self._live is not None:
            self._live.update(self.render(result, sample, now), refresh=True)
        elif sample.t - self._last_plain >= _PLAIN_EVERY_S:
            self._last_plain = sample.t
            self._console.print(self.plain_line(result, sample, now), soft_wrap=True, markup=False)

    def stop(self) -> None:
        """The run ended; the last frame stays on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def plain_line(self, result: RunResult, sample: Sample, now: float) -> str:
        """One status line: time, queues, dispatch rate, interactive TTFT p99, outcomes."""
        queued = "/".join(str(sample.queued.get(o.priority, 0)) for o in self._workload.objectives)
        top = self._workload.objectives[0]
        mine = [r for r in result.records if r.planned.objective == top.name]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(_outcomes(result).items()))
        return (
            f"[{result.label}] {min(sample.t, result.duration):4.0f}/{result.duration:.0f} s"
            f"  sent {len(result.records)}  gateway queue {queued}"
            f"  engine queue {sample.engine_waiting}"
            f"  dispatch {_dispatch_rate(result.samples):.1f}/s"
            f"  {top.name} TTFT p99 {_fmt_pct(ttft_samples(mine, now), 99)}"
            f"  | {outcomes or 'no outcomes yet'}"
        )

    def render(self, result: RunResult, sample: Sample, now: float) -> RenderableType:
        """The live frame."""
        title = Text.assemble(
            (f" {result.label} ", "bold reverse"),
            f"  {min(sample.t, result.duration):.0f} s of {result.duration:.0f} s",
            "" if sample.t < result.duration else "  (waiting for open requests)",
        )
        bar = ProgressBar(total=result.duration, completed=min(sample.t, result.duration), width=40)
        # A ProgressBar does not end its line; a grid row puts it beside the title.
        header = Table.grid(padding=(0, 2))
        header.add_row(bar, title)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("objective", "priority", "queued", "in flight", "sent", "done"):
            table.add_column(name, justify="left" if name == "objective" else "right")
        table.add_column("TTFT p50", justify="right")
        table.add_column("TTFT p99", justify="right")
        for objective in self._workload.objectives:
            mine = [r for r in result.records if r.planned.objective == objective.name]
            samples = ttft_samples(mine, now)
            table.add_row(
                objective.name,
                str(objective.priority),
                str(sample.queued.get(objective.priority, 0)),
                str(sample.in_flight.get(objective.priority, 0)),
                str(len(mine)),
                str(sum(1 for r in mine if r.outcome == COMPLETED)),
                _fmt_pct(samples, 50),
                _fmt_pct(samples, 99),
            )
        outcomes = _outcomes(result)
        open_now = len(result.records) - sum(outcomes.values())
        engines = Text(
            f"dispatch {_dispatch_rate(result.samples):.1f}/s   engines: "
            f"{sample.engine_running} running, {sample.engine_waiting} waiting inside, "
            f"KV cache {sample.kv_usage:.0%}"
        )
        parts = [f"{k} {v}" for k, v in sorted(outcomes.items())]
        parts.append(f"open {open_now}")
        return Group(header, table, engines, Text("outcomes: " + ", ".join(parts)))
