"""`sluicegate bench`: the benchmark suite (issue 7). See docs/benchmarks.md.

Parts: dispatch throughput of the bare controller, gateway overhead, streaming cost, and
overload quality against the simulator with flow control on and off. The statistics
(TPOT, goodput; percentiles and Jain's index in `sluicegate.testbed`) are public so other
benchmarks compute their figures the same way. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._dispatch import DispatchError, run_dispatch
from ._figures import Figure, Machine, PartResult, Target, machine
from ._load import equal_tenants, plan_equal_tenants, run_closed_loop
from ._overhead import OverheadOptions
from ._overload import DEFAULT_SLOS, OverloadOptions, run_overload
from ._report import Suite, render_report
from ._stats import (
    Distribution,
    Slo,
    distribution,
    goodput,
    meets_slo,
    token_times,
    tokens_until,
    tpot,
)

__all__ = [
    "DEFAULT_SLOS",
    "DispatchError",
    "Distribution",
    "Figure",
    "Machine",
    "OverheadOptions",
    "OverloadOptions",
    "PartResult",
    "Slo",
    "Suite",
    "Target",
    "distribution",
    "equal_tenants",
    "goodput",
    "machine",
    "meets_slo",
    "plan_equal_tenants",
    "render_report",
    "run_closed_loop",
    "run_dispatch",
    "run_overload",
    "token_times",
    "tokens_until",
    "tpot",
]

# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
