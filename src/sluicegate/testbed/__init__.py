"""`sluicegate.testbed`: what the demo and the bench suite both drive and measure.

A seeded workload (objectives, tenants, the simulated engines and an open-loop arrival
plan), the traffic generator that streams it through a gateway and times every token, the
stack of simulators and gateway it runs against, and the one percentile and Jain's index
every figure of the project uses. `sluicegate.demo` and `sluicegate.bench` both build on
it and on nothing private of each other. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._stack import HOST, Mode, Sample, Stack, demo_gateway_config, demo_stack
from ._stats import Percentile, censored_percentile, jain_index, percentile, ttft_samples
from ._traffic import (
    CLIENT_OUTCOMES,
    COMPLETED,
    FAILED,
    UNFINISHED,
    RequestRecord,
    StreamMeter,
    classify_outcome,
    request_body,
    run_traffic,
    send_request,
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
    service_time_s,
)

__all__ = [
    "CLIENT_OUTCOMES",
    "COMPLETED",
    "DEMO_OBJECTIVES",
    "DEMO_SIM",
    "DEMO_TENANTS",
    "FAILED",
    "HOST",
    "UNFINISHED",
    "Mode",
    "Objective",
    "Percentile",
    "PlannedRequest",
    "RequestRecord",
    "Sample",
    "Stack",
    "StreamMeter",
    "Tenant",
    "Workload",
    "censored_percentile",
    "classify_outcome",
    "demo_gateway_config",
    "demo_stack",
    "estimate_capacity",
    "jain_index",
    "percentile",
    "plan_traffic",
    "request_body",
    "run_traffic",
    "send_request",
    "service_time_s",
    "ttft_samples",
]

# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
