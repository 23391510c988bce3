"""`sluicegate bench`: the benchmark suite (issue 7). See docs/benchmarks.md.

Parts: dispatch throughput of the bare controller, gateway overhead, streaming cost, and
overload quality against the simulator with flow control on and off. The statistics
(percentiles, TPOT, goodput, Jain's index) are public so other benchmarks compute their
figures the same way. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._figures import Figure, Machine, PartResult, Target, machine
from ._load import equal_tenants, plan_equal_tenants, run_closed_loop
from ._overhead import OverheadOptions
from ._overload import DEFAULT_SLOS, OverloadOptions, run_overload
from ._report import Suite, render_report
from ._stats import (
    Distribution,
    Slo,
    censored_percentile,
    distribution,
    goodput,
    jain_index,
    meets_slo,
    percentile,
    token_times,
    tokens_until,
    tpot,
)

__all__ = [
    "DEFAULT_SLOS",
    "Distribution",
    "Figure",
    "Machine",
    "OverheadOptions",
    "OverloadOptions",
    "PartResult",
    "Slo",
    "Suite",
    "Target",
    "censored_percentile",
    "distribution",
    "equal_tenants",
    "goodput",
    "jain_index",
    "machine",
    "meets_slo",
    "percentile",
    "plan_equal_tenants",
    "render_report",
    "run_closed_loop",
    "run_overload",
    "token_times",
    "tokens_until",
    "tpot",
]

# Public names report their public home, as in `sluicegate/__init__.py`.
publish(globals(), __all__, __name__)
