"""The demo's workload (the bench suite's too): objectives, tenants, the simulated backends
and a seeded traffic plan.

Everything here is pure and deterministic: the same seed, rate and duration give the same
plan (arrival offsets, tenants, objectives, prompt and output lengths), so the run with
flow control and the run without it replay exactly the same traffic.

Capacity is estimated from the simulator's own latency model (docs/sim.md): a request
holds one of ``max_num_seqs`` batch slots for ``ttft + prompt x prefill + (out - 1) x
step``, where a decode step at a full batch is ``inter_token_latency x
time_factor_under_load`` (the engine runs full under overload). The offered rate is
``load`` times that estimate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, final

from sluicegate.sim import SimConfig

__all__ = [
    "DEMO_OBJECTIVES",
    "DEMO_SIM",
    "DEMO_TENANTS",
    "Objective",
    "PlannedRequest",
    "Tenant",
    "Workload",
    "estimate_capacity",
    "plan_traffic",
    "service_time_s",
]


@final
@dataclass(frozen=True, slots=True)
class Objective:
    """A class of requests, sent with the `x-gateway-inference-objective` header.

    Attributes:
        name: The objective's name (the header value).
        priority: The priority the gateway config gives it.
        share: Fraction of all requests of this objective.
        prompt_tokens: Inclusive range of prompt lengths.
        max_tokens: Inclusive range of output lengths (sent as ``max_tokens``).
    """

    name: str
    priority: int
    share: float
    prompt_tokens: tuple[int, int]
    max_tokens: tuple[int, int]

    @property
    def mean_prompt(self) -> float:
        """Mean prompt length in tokens."""
        return sum(self.prompt_tokens) / 2

    @property
    def mean_output(self) -> float:
        """Mean output length in tokens."""
        return sum(self.max_tokens) / 2


@final
@dataclass(frozen=True, slots=True)
class Tenant:
    """A client, sent as the `x-gateway-inference-fairness-id` header; `weight` is relative."""

    name: str
    weight: float


#: Short streamed chats, ordinary requests, and long sheddable batch jobs.
DEMO_OBJECTIVES: Final = (
    Objective("interactive", 10, 0.25, (40, 120), (16, 48)),
    Objective("standard", 0, 0.45, (100, 300), (32, 128)),
    Objective("batch", -1, 0.30, (200, 600), (128, 384)),
)

#: One tenant sends six times as much as each of the others.
DEMO_TENANTS: Final = (
    Tenant("acme", 6.0),
    Tenant("globex", 1.0),
    Tenant("initech", 1.0),
    Tenant("umbrella", 1.0),
)

#: Small engines that saturate quickly: 16 sequences, a 12k-token KV cache, 40 ms to the
#: first token and 10 ms per token alone (20 ms at a full batch). Three of them complete
#: about 20 requests/s of the demo mix, i.e. about 2,400 streamed tokens/s at capacity,
#: which one core relays through the gateway with room to spare.
DEMO_SIM: Final = SimConfig(
    model="sim-model",
    max_num_seqs=16,
    kv_cache_size=12288,
    time_to_first_token=40.0,
    inter_token_latency=10.0,
    time_factor_under_load=2.0,
    prefill_time_per_token=0.05,
    enable_prefix_caching=True,
)


@final
@dataclass(frozen=True, slots=True)
class Workload:
    """Objectives and tenants; requests pick each independently, by share and weight."""

    objectives: tuple[Objective, ...] = DEMO_OBJECTIVES
    tenants: tuple[Tenant, ...] = DEMO_TENANTS

    def objective(self, name: str) -> Objective:
        """The objective called `name`.

        Raises:
            KeyError: there is none.
        """
        for objective in self.objectives:
            if objective.name == name:
                return objective
        raise KeyError(name)


@final
@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of the plan; `at` is its offset in seconds from the start of the run."""

    index: int
    at: float
    tenant: str
    objective: str
    priority: int
    prompt_tokens: int
    max_tokens: int


def service_time_s(sim: SimConfig, prompt_tokens: float, output_tokens: float) -> float:
    """Seconds one request holds a batch slot on a fully loaded engine (see module doc)."""
    step_ms = sim.inter_token_latency * sim.time_factor_under_load
    busy_ms = (
        sim.time_to_first_token
        + prompt_tokens * sim.prefill_time_per_token
        + max(output_tokens - 1, 0) * step_ms
    )
    return busy_ms / 1000


def estimate_capacity(workload: Workload, sim: SimConfig, backends: int) -> float:
    """Requests per second `backends` engines complete with this workload's mix.

    An estimate from the latency model, ignoring KV-cache preemption; the measured
    completion rate is in the report.
    """
    total = sum(o.share for o in workload.objectives)
    mean_s = sum(
        o.share / total * service_time_s(sim, o.mean_prompt, o.mean_output)
        for o in workload.objectives
    )
    return backends * sim.max_num_seqs / mean_s


def plan_traffic(
    workload: Workload, *, rate: float, duration: float, seed: int
) -> tuple[PlannedRequest, ...]:
    """An open-loop Poisson arrival plan at `rate` requests/s over `duration` seconds.

    Args:
        workload: the mix to draw from.
        rate: mean arrivals per second (> 0).
        duration: seconds of arrivals (>= 0).
        seed: the same seed gives the same plan.

    Raises:
        ValueError: `rate` is not positive or `duration` is negative.
    """
    if rate <= 0 or duration < 0:
        raise ValueError(f"need rate > 0 and duration >= 0, got {rate!r}, {duration!r}")
    rng = random.Random(seed)
    objectives = workload.objectives
    obj_weights = [o.share for o in objectives]
    tenants = [t.name for t in workload.tenants]
    tenant_weights = [t.weight for t in workload.tenants]
    plan: list[PlannedRequest] = []
    at = rng.expovariate(rate)
    while at < duration:
        objective = rng.choices(objectives, obj_weights)[0]
        tenant = rng.choices(tenants, tenant_weights)[0]
        plan.append(
            PlannedRequest(
                index=len(plan),
                at=at,
                tenant=tenant,
                objective=objective.name,
                priority=objective.priority,
                prompt_tokens=rng.randint(*objective.prompt_tokens),
                max_tokens=rng.randint(*objective.max_tokens),
            )
        )
        at += rng.expovariate(rate)
    return tuple(plan)
