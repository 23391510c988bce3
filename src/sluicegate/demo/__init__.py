"""`sluicegate demo`: flow control on and off under the same overload, measured.

Simulated backends (`sluicegate.sim`) and the gateway (`sluicegate.gateway`) run on
loopback in this process; an open-loop, seeded traffic generator streams chat requests
through the gateway and measures TTFT, inter-token latency and end-to-end time per
request. The workload, the traffic generator and the stack are `sluicegate.testbed`'s,
shared with `sluicegate.bench`. See docs/demo.md. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._report import render_report, write_report
from ._run import DemoError, DemoOptions, DemoResult, run_demo
from ._stats import RunResult, RunSummary, summarize
from ._summary import DemoSummary, reading, summarize_demo

__all__ = [
    "DemoError",
    "DemoOptions",
    "DemoResult",
    "DemoSummary",
    "RunResult",
    "RunSummary",
    "reading",
    "render_report",
    "run_demo",
    "summarize",
    "summarize_demo",
    "write_report",
]

# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
