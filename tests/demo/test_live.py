"""The live view's frame and its plain-text line, rendered without a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from sluicegate.demo import RunResult
from sluicegate.demo._live import LiveView
from sluicegate.testbed import COMPLETED, PlannedRequest, RequestRecord, Sample, Workload


def run_with_samples() -> RunResult:
    run = RunResult("off", "flow control off", 40.0, 10, started_at=0.0)
    done = RequestRecord(PlannedRequest(0, 0.0, "acme", "interactive", 10, 10, 2), sent_at=0.0)
    done.meter.feed(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', 0.1)
    done.finish(COMPLETED, 0.2)
    waiting = RequestRecord(PlannedRequest(1, 1.0, "globex", "interactive", 10, 10, 2), 1.0)
    run.records += [done, waiting]
    for t, dispatched in ((10.0, 100), (11.0, 110), (12.0, 130)):
        run.samples.append(Sample(t, {10: 0, 0: 0, -1: 0}, {10: 1, 0: 5}, dispatched, 48, 7, 0.5))
    return run


def test_frame_shows_bands_rates_and_outcomes() -> None:
    """Queue, in flight, TTFT with the open request as a lower bound, dispatch rate, outcomes."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    view = LiveView(console, Workload())
    run = run_with_samples()
    console.print(view.render(run, run.samples[-1], now=12.0))
    frame = out.getvalue()
    assert "flow control off" in frame
    assert "12 s of 40 s" in frame
    # The open request has waited 11 s: p99 of (0.1, >= 11) is 0.1 + 10.9 x 0.99, a bound.
    assert ">= 10.9 s" in frame
    assert "dispatch 15.0/s" in frame  # (130 - 100) / 2 s
    assert "7 waiting inside" in frame
    assert "Completed 1, open 1" in frame


def test_without_a_terminal_plain_lines_are_printed_every_few_seconds() -> None:
    """CI logs get one line per 5 s, with the label unmangled by markup."""
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    view = LiveView(console, Workload())
    run = run_with_samples()
    assert not view.interactive
    view.start(run)
    for sample in run.samples:
        view.update(run, sample, now=sample.t)
    view.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[flow control off] running for 40 s"
    assert len(lines) == 2  # t=10 printed; t=11 and t=12 are within 5 s of it
    assert "interactive TTFT p99 >= 8.9 s" in lines[1]  # 0.1 + 8.9 x 0.99
