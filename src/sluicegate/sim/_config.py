"""The simulator's configuration: one frozen dataclass mirroring the CLI flags.

Durations are milliseconds, as in llm-d-inference-sim's flags (`--time-to-first-token`,
`--inter-token-latency`, `--prefill-time-per-token`), so a command line reads the same
against either simulator. Sizes are tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal, get_args

from .._errors import ConfigError

__all__ = ["FAILURE_TYPES", "FailureType", "Mode", "SchedulingPolicy", "SimConfig"]

#: `http-500` and `http-429` answer at once with that status; `drop` closes the
#: connection half way through the response; `stall` takes a batch slot and never
#: produces a token (until the client gives up).
FailureType = Literal["http-500", "http-429", "drop", "stall"]
FAILURE_TYPES: Final[tuple[FailureType, ...]] = get_args(FailureType)

#: `random` writes seeded filler words; `echo` repeats the prompt (the last message in chat).
Mode = Literal["random", "echo"]

#: `fcfs` serves the engine's waiting queue in arrival order; `priority` serves the lowest
#: request `priority` first (vLLM's convention), arrival order breaking ties.
SchedulingPolicy = Literal["fcfs", "priority"]


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulated model server needs. Immutable; validated on creation.

    Attributes:
        model: The model name; also the served name when `served_model_names` is empty.
        served_model_names: Names accepted in requests and listed by `/v1/models`.
        max_num_seqs: Most requests running (in the batch) at once.
        kv_cache_size: KV cache capacity in tokens (prompt + generated, running requests).
        max_model_len: Longest prompt + output one request may ask for (else HTTP 400).
        max_waiting_queue_length: Most requests waiting in the engine; beyond it, HTTP 429.
            `None` means unbounded.
        time_to_first_token: Milliseconds from admission to the first token (before prefill).
        inter_token_latency: Milliseconds per decode step with a batch of one.
        prefill_time_per_token: Milliseconds of prefill per prompt token.
        time_factor_under_load: Decode step multiplier at a full batch (>= 1); the stretch
            grows linearly with the number of running requests, as in llm-d-inference-sim.
        scheduling_policy: Order of the engine's waiting queue.
        mode: Response content.
        seed: Seeds output lengths, content and failure draws.
        random_output_max: Upper bound of the uniform output length drawn when a request
            sets no `max_tokens`.
        failure_injection_rate: Percent (0..100, like llm-d-inference-sim) of requests
            that fail with one of `failure_types`.
        failure_types: Failures to draw from, uniformly.
        freeze_metrics: Serve the first `/metrics` snapshot forever (stale metrics).
        enable_prefix_caching: Cache the KV of full blocks and skip their prefill when a
            request starts with cached blocks (vLLM's automatic prefix caching; vLLM V1
            has it on by default, the simulator off so existing figures stay comparable).
        block_size: Tokens per KV block, the prefix cache's granularity (vLLM: 16).
        enable_prompt_tokens_details: Report `usage.prompt_tokens_details.cached_tokens`
            (the prompt tokens the prefix cache saved), as vLLM's flag of that name.
    """

    model: str = "sim-model"
    served_model_names: tuple[str, ...] = ()
    max_num_seqs: int = 64
    kv_cache_size: int = 65536
    max_model_len: int = 4096
    max_waiting_queue_length: int | None = None
    time_to_first_token: float = 100.0
    inter_token_latency: float = 20.0
    prefill_time_per_token: float = 0.05
    time_factor_under_load: float = 1.5
    scheduling_policy: SchedulingPolicy = "fcfs"
    mode: Mode = "random"
    seed: int = 0
    random_output_max: int = 256
    failure_injection_rate: float = 0.0
    failure_types: tuple[FailureType, ...] = FAILURE_TYPES
    freeze_metrics: bool = False
    enable_prefix_caching: bool = False
    block_size: int = 16
    enable_prompt_tokens_details: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.model), "model", self.model, "a non-empty name")
        for name in (
            "max_num_seqs",
            "kv_cache_size",
            "max_model_len",
            "random_output_max",
            "block_size",
        ):
            value = getattr(self, name)
            _check(value >= 1, name, value, "an integer >= 1")
        limit = self.max_waiting_queue_length
        _check(limit is None or limit >= 0, "max_waiting_queue_length", limit, "None or >= 0")
        for name in ("time_to_first_token", "inter_token_latency", "prefill_time_per_token"):
            value = getattr(self, name)
            _check(value >= 0, name, value, "milliseconds >= 0")
        factor = self.time_factor_under_load
        _check(factor >= 1.0, "time_factor_under_load", factor, ">= 1.0")
        _check_choice("scheduling_policy", self.scheduling_policy, get_args(SchedulingPolicy))
        _check_choice("mode", self.mode, get_args(Mode))
        check_failure_injection(self.failure_injection_rate, self.failure_types)

    @property
    def served_names(self) -> tuple[str, ...]:
        """The names requests may use; the first one labels the metrics."""
        return self.served_model_names or (self.model,)

    def replace(self, **changes: object) -> SimConfig:
        """Return a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # kwargs typed by field


def check_failure_injection(rate: float, types: tuple[str, ...]) -> None:
    """Validate a failure-injection setting.

    Raises:
        ConfigError: The rate is outside 0..100 or a type is unknown.
    """
    _check(0.0 <= rate <= 100.0, "failure_injection_rate", rate, "a percentage in 0..100")
    for kind in types:
        _check_choice("failure_types", kind, FAILURE_TYPES)
    _check(bool(types) or rate == 0.0, "failure_types", types, "at least one type")


def _check(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"SimConfig.{field} must be {expected}, got {value!r}")


def _check_choice(field: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        known = ", ".join(map(str, choices))
        raise ConfigError(f"SimConfig.{field} must be one of {known}; got {value!r}")
