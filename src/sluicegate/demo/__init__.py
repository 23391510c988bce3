"""`sluicegate demo`: flow control on and off under the same overload, measured.

Simulated backends (`sluicegate.sim`) and the gateway (`sluicegate.gateway`) run on
loopback in this process; an open-loop, seeded traffic generator streams chat requests
through the gateway and measures TTFT, inter-token latency and end-to-end time per
request. See docs/demo.md. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._report import render_report, write_report
from ._run import DemoError, DemoOptions, DemoResult, run_demo
from ._stack import Sample, Stack, demo_gateway_config, demo_stack
from ._stats import Percentile, RunResult, RunSummary, percentile, summarize, ttft_samples
from ._summary import DemoSummary, reading, summarize_demo
from ._traffic import (
    COMPLETED,
    FAILED,
    UNFINISHED,
    RequestRecord,
    StreamMeter,
    classify_outcome,
    run_traffic,
)
from ._workload import (
    DEMO_OBJECTIVES,
    DEMO_SIM,
    DEMO_TENANTS,
    Objective,
    PlannedRequest,
    Tenant,
    Workload,
    estimate_capacity,
    plan_traffic,
)

__all__ = [
    "COMPLETED",
    "DEMO_OBJECTIVES",
    "DEMO_SIM",
    "DEMO_TENANTS",
    "FAILED",
    "UNFINISHED",
    "DemoError",
    "DemoOptions",
    "DemoResult",
    "DemoSummary",
    "Objective",
    "Percentile",
    "PlannedRequest",
    "RequestRecord",
    "RunResult",
    "RunSummary",
    "Sample",
    "Stack",
    "StreamMeter",
    "Tenant",
    "Workload",
    "classify_outcome",
    "demo_gateway_config",
    "demo_stack",
    "estimate_capacity",
    "percentile",
    "plan_traffic",
    "reading",
    "render_report",
    "run_demo",
    "run_traffic",
    "summarize",
    "summarize_demo",
    "ttft_samples",
    "write_report",
]

# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
