"""Flow-control configuration: frozen dataclasses, validated on construction.

Every error is a `ConfigError` naming the field and the value; policy and queue names
are resolved here, so a config that constructs is a config that runs.

Annotations are evaluated (no ``from __future__ import annotations``): the public
classes report ``sluicegate`` as their module, where a string hint such as
``Mapping[int, BandConfig]`` could not be resolved by `typing.get_type_hints`, and the
gateway validates its YAML into these dataclasses from their type hints.
"""

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import final

from .._errors import ConfigError, IncompatiblePolicyError, UnknownPluginError
from ._policies import FAIRNESS_POLICIES, ORDERING_POLICIES
from ._queues import QUEUES

__all__ = ["BandConfig", "FlowControlConfig", "TenantLimits"]


def _check_name(field_name: str, value: str, table: Mapping[str, object]) -> None:
    if value not in table:
        known = ", ".join(sorted(table))
        raise UnknownPluginError(f"{field_name}={value!r} is unknown; known names: {known}")


def _check_limit(field_name: str, value: int | None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{field_name} must be an int >= 0 or None, got {value!r}")


def _check_duration(field_name: str, value: float | None, *, allow_none: bool) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{field_name} must be a number of seconds > 0, got None")
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or math.isnan(value)
        or value <= 0
    ):
        raise ConfigError(f"{field_name} must be a number of seconds > 0, got {value!r}")


@final
@dataclass(frozen=True, slots=True)
class BandConfig:
    """How one priority band queues and picks requests.

    Args:
        ordering: order inside a flow: ``fcfs``, ``edf`` or ``slo-deadline``.
        fairness: choice between the flows of the band: ``global-strict``,
            ``round-robin`` or ``token-fair`` (see `FAIRNESS_POLICIES`).
        queue: ``fifo`` or ``heap``; None picks ``heap`` when the ordering needs it,
            else ``fifo``.
        max_requests: most requests waiting in the band; None = unlimited; 0 = never
            queue (dispatch at once when capacity is free, else reject: a sheddable
            fast-reject band).
        max_bytes: most bytes waiting in the band; None = unlimited.
        input_token_weight: cost of one input token (prompt) in token accounting.
        output_token_weight: cost of one output token; output costs more to serve.
        max_utilization: the band dispatches only while the detector's `utilization()`
            is below this fraction, keeping the rest of the capacity as headroom for
            higher bands (their requests then find a free slot at once instead of
            waiting for one to end). 1 = up to saturation.
    """

    ordering: str = "fcfs"
    fairness: str = "global-strict"
    queue: str | None = None
    max_requests: int | None = 5000
    max_bytes: int | None = 1_000_000_000
    input_token_weight: float = 1.0
    output_token_weight: float = 2.0
    max_utilization: float = 1.0

    def __post_init__(self) -> None:
        value = self.max_utilization
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            raise ConfigError(f"max_utilization must be a number in (0, 1], got {value!r}")
        for name in ("input_token_weight", "output_token_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        _check_name("ordering", self.ordering, ORDERING_POLICIES)
        _check_name("fairness", self.fairness, FAIRNESS_POLICIES)
        if self.queue is not None:
            _check_name("queue", self.queue, QUEUES)
        _check_limit("max_requests", self.max_requests)
        _check_limit("max_bytes", self.max_bytes)
        requires = ORDERING_POLICIES[self.ordering]().requires
        missing = requires - QUEUES[self.queue_name]().capabilities
        if missing:
            raise IncompatiblePolicyError(
                f"ordering={self.ordering!r} needs queue capabilities {sorted(missing)} "
                f"that queue={self.queue!r} lacks; use queue='heap' or leave it unset"
            )

    @property
    def queue_name(self) -> str:
        """The queue actually used (resolves the ``None`` default)."""
        if self.queue is not None:
            return self.queue
        return "heap" if ORDERING_POLICIES[self.ordering]().requires else "fifo"


@final
@dataclass(frozen=True, slots=True)
class TenantLimits:
    """Ceilings of one tenant (a fairness id), across all bands.

    Args:
        max_in_flight: most of its requests dispatched at once; None = unlimited. At
            the ceiling its requests wait in their queues while other flows are served.
        max_queued: most of its requests waiting at once; None = unlimited. Over it a
            request is refused with `QueueFullError`.
    """

    max_in_flight: int | None = None
    max_queued: int | None = None

    def __post_init__(self) -> None:
        _check_limit("max_queued", self.max_queued)
        _check_limit("max_in_flight", self.max_in_flight)
        if self.max_in_flight == 0:
            raise ConfigError("max_in_flight must be >= 1 or None, got 0")


def _frozen_tenants(tenants: Mapping[str, TenantLimits]) -> Mapping[str, TenantLimits]:
    if not isinstance(tenants, Mapping):
        raise ConfigError(f"tenants must be a mapping of id to TenantLimits, got {tenants!r}")
    for tenant_id, limits in tenants.items():
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ConfigError(f"tenants: keys must be non-empty strings, got {tenant_id!r}")
        if not isinstance(limits, TenantLimits):
            raise ConfigError(f"tenants[{tenant_id!r}] must be a TenantLimits, got {limits!r}")
    return MappingProxyType(dict(tenants))


def _frozen_bands(bands: Mapping[int, BandConfig]) -> Mapping[int, BandConfig]:
    out: dict[int, BandConfig] = {}
    for priority, band in bands.items():
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigError(f"bands: priority must be an int, got {priority!r}")
        if not isinstance(band, BandConfig):
            raise ConfigError(f"bands[{priority}] must be a BandConfig, got {band!r}")
        out[priority] = band
    return MappingProxyType(dict(sorted(out.items(), reverse=True)))


def _frozen_weights(weights: Mapping[str, float]) -> Mapping[str, float]:
    if not isinstance(weights, Mapping):
        raise ConfigError(
            f"flow_weights must be a mapping of id or pattern to weight, got {weights!r}"
        )
    out: dict[str, float] = {}
    for pattern, weight in weights.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"flow_weights: keys must be non-empty strings, got {pattern!r}")
        if (
            not isinstance(weight, int | float)
            or isinstance(weight, bool)
            or not (0 < weight < math.inf)
        ):
            raise ConfigError(f"flow_weights[{pattern!r}] must be a number > 0, got {weight!r}")
        out[pattern] = float(weight)
    return MappingProxyType(out)


@final
@dataclass(frozen=True, slots=True)
class FlowControlConfig:
    """The whole flow-control configuration.

    Args:
        default_ttl: seconds a request may wait when it names no TTL; None = forever.
        no_endpoint_ttl: seconds a request may wait while the pool has no backend at
            all; None = only `default_ttl` applies; 0 = reject at once when empty.
        max_requests: most requests waiting across all bands; None = unlimited.
        max_bytes: most bytes waiting across all bands; None = unlimited.
        default_band: template for bands created on first sight, and for band 0.
        negative_band: template for priorities < 0; None = `default_band`.
        bands: static bands by priority; they keep their config forever.
        dynamic_bands: create a band the first time its priority is seen; when off,
            requests at an unknown priority are served in band 0.
        flow_idle_timeout: seconds a flow with nothing queued or in flight is kept.
        band_idle_timeout: seconds a dynamic band is kept after its last request left
            (queued or in flight); its flows are kept `flow_idle_timeout` of that, so it
            must be at least `flow_idle_timeout`.
        flow_weights: weight by fairness id or glob pattern (`fnmatch`); exact ids win,
            then the first matching pattern in order; default 1. A flow with weight 2
            gets twice the token service of a flow with weight 1 under `token-fair`.
        fairness_window: seconds of the sliding window for the fairness statistics.
        demand_headroom: keep free slots for higher bands, as many as their recent
            demand needs (none when they send nothing); needs a detector with
            ``slots()`` (see `sluicegate.SaturationDetector`).
        tenants: per-tenant ceilings by exact fairness id (`TenantLimits`), enforced
            across all bands; ids not listed are unlimited.
        displacement: when a global limit (`max_requests`, `max_bytes`) would refuse
            an arrival, evict queued requests of strictly lower priority (lowest band
            first, newest first inside it; `EvictedDisplaced`) to make room. Band
            limits are never met by displacement: a band holds only its own priority.
        early_reject: refuse at once (`RejectedDeadline`) a request whose deadline (its
            SLO when given, else its TTL) cannot be met given the work queued ahead of
            it, once the pool's drain rate is known.
        early_reject_margin: how far beyond its deadline the estimated wait must be
            before an early rejection: reject when wait > deadline x (1 + margin).
            Larger = fewer false rejects, more doomed requests queued.
        retry_reservations: a band's `max_requests` refusal promises its flow a place
            after the advised delay (`QueueFullError.retry_after`, the gateway's
            Retry-After): until then fresh arrivals may not take the places promised,
            and an arrival of the flow in its window may take any free place.
        retry_grace: seconds a promised place is kept after it is due.
    """

    default_ttl: float | None = 30.0
    no_endpoint_ttl: float | None = None
    max_requests: int | None = None
    max_bytes: int | None = None
    default_band: BandConfig = field(default_factory=BandConfig)
    negative_band: BandConfig | None = None
    bands: Mapping[int, BandConfig] = field(default_factory=dict)
    dynamic_bands: bool = True
    flow_idle_timeout: float = 300.0
    band_idle_timeout: float = 600.0
    flow_weights: Mapping[str, float] = field(default_factory=dict)
    fairness_window: float = 10.0
    demand_headroom: bool = True
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)
    displacement: bool = True
    early_reject: bool = True
    early_reject_margin: float = 0.25
    retry_reservations: bool = True
    retry_grace: float = 2.0

    def __post_init__(self) -> None:
        _check_duration("default_ttl", self.default_ttl, allow_none=True)
        if self.no_endpoint_ttl != 0:
            _check_duration("no_endpoint_ttl", self.no_endpoint_ttl, allow_none=True)
        _check_limit("max_requests", self.max_requests)
        _check_limit("max_bytes", self.max_bytes)
        if not isinstance(self.default_band, BandConfig):
            raise ConfigError(f"default_band must be a BandConfig, got {self.default_band!r}")
        if self.negative_band is not None and not isinstance(self.negative_band, BandConfig):
            raise ConfigError(f"negative_band must be a BandConfig, got {self.negative_band!r}")
        if not isinstance(self.bands, Mapping):
            raise ConfigError(
                f"bands must be a mapping of priority to BandConfig, got {self.bands!r}"
            )
        object.__setattr__(self, "bands", _frozen_bands(self.bands))
        if not isinstance(self.dynamic_bands, bool):
            raise ConfigError(f"dynamic_bands must be a bool, got {self.dynamic_bands!r}")
        _check_duration("flow_idle_timeout", self.flow_idle_timeout, allow_none=False)
        _check_duration("band_idle_timeout", self.band_idle_timeout, allow_none=False)
        if self.band_idle_timeout < self.flow_idle_timeout:
            raise ConfigError(
                f"band_idle_timeout={self.band_idle_timeout!r} is shorter than "
                f"flow_idle_timeout={self.flow_idle_timeout!r}: a band is kept while it has "
                "flows, so it cannot go sooner than they do"
            )
        _check_duration("fairness_window", self.fairness_window, allow_none=False)
        object.__setattr__(self, "flow_weights", _frozen_weights(self.flow_weights))
        if not isinstance(self.demand_headroom, bool):
            raise ConfigError(f"demand_headroom must be a bool, got {self.demand_headroom!r}")
        object.__setattr__(self, "tenants", _frozen_tenants(self.tenants))
        _check_duration("retry_grace", self.retry_grace, allow_none=False)
        if self.retry_grace == math.inf:
            raise ConfigError("retry_grace must be finite: a promise held forever")
        for name in ("displacement", "early_reject", "retry_reservations"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        margin = self.early_reject_margin
        if (
            not isinstance(margin, int | float)
            or isinstance(margin, bool)
            or not 0 <= margin < math.inf
        ):
            raise ConfigError(f"early_reject_margin must be a number >= 0, got {margin!r}")

    def weight_for(self, flow_id: str) -> float:
        """The fairness weight of `flow_id`: exact match, else first glob, else 1."""
        weights = self.flow_weights
        weight = weights.get(flow_id)
        if weight is not None:
            return weight
        for pattern, value in weights.items():
            if fnmatch.fnmatchcase(flow_id, pattern):
                return value
        return 1.0

    def template_for(self, priority: int) -> BandConfig:
        """The config a band at `priority` gets: static, else the matching template."""
        static = self.bands.get(priority)
        if static is not None:
            return static
        if priority < 0 and self.negative_band is not None:
            return self.negative_band
        return self.default_band
