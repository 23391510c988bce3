"""Shared vocabulary: flow keys, outcomes and the frozen statistics snapshots."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "BandStatistics",
    "ControllerStatistics",
    "FlowKey",
    "FlowStatistics",
    "Outcome",
]


@final
@dataclass(frozen=True, slots=True)
class FlowKey:
    """The identity of a flow: a fairness id and an integer priority.

    Higher priority is more important; negative priorities are allowed and mean
    sheddable work. The same tenant at two priorities is two flows.

    Raises:
        ValueError: the id is empty or not a string, or the priority is not an int.
    """

    id: str
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"FlowKey.id must be a non-empty string, got {self.id!r}")
        # bool is an int subclass; True as a priority is always a mistake.
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"FlowKey.priority must be an int, got {self.priority!r}")

    def __str__(self) -> str:
        # Upstream rendered negative priorities through an unsigned cast
        # (-1 -> 18446744073709551615); ours prints the signed value.
        return f"{self.id}:{self.priority}"


@final
class Outcome(enum.Enum):
    """How a request left the flow controller. Values are the metric labels."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
    REJECTED_OTHER = "RejectedOther"
    #: Its deadline (TTL, or SLO when given) cannot be met given the work ahead of it.
    REJECTED_DEADLINE = "RejectedDeadline"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
    EVICTED_CANCELLED = "EvictedCancelled"
    EVICTED_OTHER = "EvictedOther"
    #: Evicted from a full queue to make room for a higher-priority arrival.
    EVICTED_DISPLACED = "EvictedDisplaced"

    @property
    def rejected(self) -> bool:
        """True for outcomes of requests that never entered a queue."""
        return self.value.startswith("Rejected")

    @property
    def evicted(self) -> bool:
        """True for outcomes of requests removed from a queue without dispatch."""
        return self.value.startswith("Evicted")


@final
@dataclass(frozen=True, slots=True)
class FlowStatistics:
    """One flow at one moment."""

    key: FlowKey
    queued_requests: int
    queued_bytes: int
    in_flight: int
    #: Loop time of the oldest waiting request's arrival, or None when nothing waits.
    oldest_arrival: float | None
    #: Fairness weight (from `flow_weights`).
    weight: float
    #: Tokens served so far: estimates at dispatch, replaced by recorded usage.
    input_tokens: int
    output_tokens: int
    #: Weighted token service divided by the weight: what `token-fair` equalises.
    service: float


@final
@dataclass(frozen=True, slots=True)
class BandStatistics:
    """One priority band at one moment."""

    priority: int
    queued_requests: int
    queued_bytes: int
    in_flight: int
    flows: int
    max_requests: int | None
    max_bytes: int | None
    #: True for bands created from a template (on first sight or by reconcile).
    dynamic: bool
    #: True while the band is no longer desired and waits to drain before removal.
    retiring: bool
    ordering: str
    fairness: str
    #: Requests at an unknown priority served here because dynamic bands are off.
    fallback_requests: int
    #: Jain's index of normalised token service over the fairness window, among the
    #: flows backlogged in it (1 = perfectly fair); None without two such flows or a clock.
    jain_index: float | None
    #: Largest difference of normalised token service in the window between those flows.
    max_service_gap: float | None


@final
@dataclass(frozen=True, slots=True)
class ControllerStatistics:
    """A consistent snapshot of a flow controller.

    Conservation holds at every moment::

        submitted == dispatched + rejected + evicted + queued_requests

    where ``dispatched``, ``rejected`` and ``evicted`` sum the matching ``outcomes``.
    """

    submitted: int
    queued_requests: int
    queued_bytes: int
    in_flight: int
    max_requests: int | None
    max_bytes: int | None
    outcomes: Mapping[Outcome, int]
    bands: Mapping[int, BandStatistics]
    flows: Mapping[FlowKey, FlowStatistics]
    closed: bool

    @property
    def dispatched(self) -> int:
        """Requests that were dispatched (in flight now or released since)."""
        return self.outcomes.get(Outcome.DISPATCHED, 0)

    @property
    def rejected(self) -> int:
        """Requests refused before they entered a queue."""
        return sum(n for o, n in self.outcomes.items() if o.rejected)

    @property
    def evicted(self) -> int:
        """Requests removed from a queue without being dispatched."""
        return sum(n for o, n in self.outcomes.items() if o.evicted)
