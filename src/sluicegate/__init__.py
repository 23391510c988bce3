"""sluicegate: flow control for LLM inference.

Strict priority between bands, fairness between the flows of a band, an ordering
inside each flow, capacity limits, TTLs and cancellation, all decided on one asyncio
event loop. This package needs nothing outside the standard library; the gateway, the
simulator and the CLI live in subpackages on top of it.
"""

from __future__ import annotations

from ._controller import FlowController
from ._core._config import BandConfig, FlowControlConfig, TenantLimits
from ._core._policies import (
    FAIRNESS_POLICIES,
    ORDERING_POLICIES,
    Edf,
    FairnessPolicy,
    Fcfs,
    GlobalStrict,
    OrderingPolicy,
    RoundRobin,
    SloDeadline,
    TokenFair,
)
from ._core._queues import QUEUES, FifoQueue, HeapQueue, Queue
from ._core._saturation import ConcurrencyLimit, NeverSaturated, SaturationDetector
from ._core._ticket import Ticket
from ._errors import (
    ConfigError,
    ControllerClosedError,
    ControllerClosedEvictedError,
    DeadlineUnreachableError,
    DisplacedError,
    EvictedError,
    FlowControlError,
    IncompatiblePolicyError,
    NoEndpointsError,
    NoEndpointsEvictedError,
    QueueFullError,
    RejectedError,
    TTLExpiredError,
    UnknownPluginError,
    WouldBlock,
)
from ._exports import publish
from ._types import BandStatistics, ControllerStatistics, FlowKey, FlowStatistics, Outcome

__version__ = "0.1.0.dev0"

__all__ = [
    "FAIRNESS_POLICIES",
    "ORDERING_POLICIES",
    "QUEUES",
    "BandConfig",
    "BandStatistics",
    "ConcurrencyLimit",
    "ConfigError",
    "ControllerClosedError",
    "ControllerClosedEvictedError",
    "ControllerStatistics",
    "DeadlineUnreachableError",
    "DisplacedError",
    "Edf",
    "EvictedError",
    "FairnessPolicy",
    "Fcfs",
    "FifoQueue",
    "FlowControlConfig",
    "FlowControlError",
    "FlowController",
    "FlowKey",
    "FlowStatistics",
    "GlobalStrict",
    "HeapQueue",
    "IncompatiblePolicyError",
    "NeverSaturated",
    "NoEndpointsError",
    "NoEndpointsEvictedError",
    "OrderingPolicy",
    "Outcome",
    "Queue",
    "QueueFullError",
    "RejectedError",
    "RoundRobin",
    "SaturationDetector",
    "SloDeadline",
    "TTLExpiredError",
    "TenantLimits",
    "Ticket",
    "TokenFair",
    "UnknownPluginError",
    "WouldBlock",
    "__version__",
]

# Public names report their public home (trio/anyio do the same), so reprs, docs and
# pickles never mention private modules.
publish(globals(), __all__, __name__)
