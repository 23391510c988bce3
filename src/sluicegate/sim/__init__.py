"""A simulated vLLM-compatible model server that saturates like the real one.

OpenAI endpoints (chat and completions, streamed or not), vLLM's `/metrics` names, and an
engine model with continuous batching, a KV cache, an internal FCFS (or priority) queue
and load-dependent latency, all on the event-loop clock. See docs/sim.md.

    async with serve_in_background(SimConfig(max_num_seqs=8)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="-")
"""

from __future__ import annotations

from .._exports import publish
from ._app import SimApp, create_app
from ._config import FAILURE_TYPES, FailureType, Mode, SchedulingPolicy, SimConfig
from ._engine import EngineStatistics, RequestState, SimEngine, SimRequest
from ._errors import (
    EngineClosedError,
    InjectedFailureError,
    InvalidRequestError,
    ModelNotFoundError,
    SimError,
    WaitingQueueFullError,
)
from ._serve import serve_in_background, serve_many

__all__ = [
    "FAILURE_TYPES",
    "EngineClosedError",
    "EngineStatistics",
    "FailureType",
    "InjectedFailureError",
    "InvalidRequestError",
    "Mode",
    "ModelNotFoundError",
    "RequestState",
    "SchedulingPolicy",
    "SimApp",
    "SimConfig",
    "SimEngine",
    "SimError",
    "SimRequest",
    "WaitingQueueFullError",
    "create_app",
    "serve_in_background",
    "serve_many",
]

# Public names report their public home (house style: see tests/sim/test_exports.py).
publish(globals(), __all__, __name__)
