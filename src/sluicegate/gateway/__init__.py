"""The OpenAI-compatible flow-control gateway (`sluicegate serve`).

A raw ASGI application served by uvicorn, relaying to pools of model servers through
its own keep-alive HTTP/1.1 client (`_http1`), with a `sluicegate.FlowController` and a saturation
detector per pool. Needs the ``server`` extras.
"""

from __future__ import annotations

from .._exports import publish
from ._adaptive import AdaptiveDetector, AdaptiveLimit
from ._app import Gateway
from ._classify import Classification, classify
from ._config import (
    AdaptiveSettings,
    ConcurrencySettings,
    GatewayConfig,
    GatewayConfigError,
    HealthSettings,
    MetricsSettings,
    ObjectiveSettings,
    PoolSettings,
    ServerSettings,
    UtilizationSettings,
    load_config,
    parse_config,
)
from ._errors import GatewayError
from ._pool import Pool, Router
from ._saturation import (
    Backend,
    BackendMetrics,
    Binding,
    ConcurrencyDetector,
    UtilizationDetector,
    binding_of,
)
from ._scrape import parse_metrics
from ._server import run, serve_in_background

__all__ = [
    "AdaptiveDetector",
    "AdaptiveLimit",
    "AdaptiveSettings",
    "Backend",
    "BackendMetrics",
    "Binding",
    "Classification",
    "ConcurrencyDetector",
    "ConcurrencySettings",
    "Gateway",
    "GatewayConfig",
    "GatewayConfigError",
    "GatewayError",
    "HealthSettings",
    "MetricsSettings",
    "ObjectiveSettings",
    "Pool",
    "PoolSettings",
    "Router",
    "ServerSettings",
    "UtilizationDetector",
    "UtilizationSettings",
    "binding_of",
    "classify",
    "load_config",
    "parse_config",
    "parse_metrics",
    "run",
    "serve_in_background",
]

publish(globals(), __all__, __name__)
