"""Gateway configuration: YAML validated by pydantic into frozen models.

Every error is a `GatewayConfigError` whose message names the file, the field path and
the offending value, so a typo never silently does nothing (unknown keys are refused).
The flow-control section is validated into the core's `sluicegate.FlowControlConfig`
itself, so a config that loads is a config the controllers accept.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping  # also resolves the core dataclasses' Mapping hints
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

import sluicegate as sg

from ._auth import AuthSettings

__all__ = [
    "AdaptiveSettings",
    "ConcurrencySettings",
    "GatewayConfig",
    "GatewayConfigError",
    "HealthSettings",
    "MetricsSettings",
    "ObjectiveSettings",
    "PoolSettings",
    "ServerSettings",
    "UtilizationSettings",
    "load_config",
    "parse_config",
]

#: Names usable as objectives and pools: what a header or a label can carry safely.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}\Z")


class GatewayConfigError(sg.ConfigError):
    """The gateway configuration is invalid. The message names file, field and value."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _plain(value: object) -> object:
    """`value` with dataclasses and read-only mappings made dicts, for dumping (pydantic
    would hand the core's frozen `MappingProxyType` fields through as they are)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: The one default the gateway sets differently from the core: with real backends an
#: empty pool is common (a wrong URL, all of them down), and a client is better told
#: 503 `no_endpoints` after a second than `queue_timeout` after `default_ttl`. The core
#: keeps None: a detector may never report an empty pool, and the deadline would cost
#: every queued request a second timer entry for nothing.
NO_ENDPOINT_TTL: Final = 1.0


def _gateway_defaults(raw: object) -> object:
    if isinstance(raw, Mapping) and "no_endpoint_ttl" not in raw:
        return {**raw, "no_endpoint_ttl": NO_ENDPOINT_TTL}
    return raw


#: The flow-control section is the core's own `sluicegate.FlowControlConfig`, validated
#: by pydantic from its fields and type hints (the bands are `sluicegate.BandConfig`, the
#: tenants `sluicegate.TenantLimits`): each setting and its default has one definition,
#: the core's, but for `NO_ENDPOINT_TTL`. The gateway's model config applies inside it
#: (unknown keys refused, no inf or NaN); the core's own checks (`__post_init__`) report
#: under the section's path.
FlowControlSection = Annotated[
    sg.FlowControlConfig, BeforeValidator(_gateway_defaults), PlainSerializer(_plain)
]


class UtilizationSettings(_Model):
    """Saturation from each backend's scraped /metrics (vLLM or SGLang names)."""

    type: Literal["utilization"] = "utilization"
    queue_depth_threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    kv_cache_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    scrape_interval: _Seconds = 0.05
    staleness: _Seconds = 1.0
    stale_policy: Literal["fail-closed", "fail-open", "last-known"] = "fail-closed"
    #: Also hold each backend to the adaptive limit learned from its TTFT (the
    #: thresholds alone let requests wait inside the engine, where priority does not
    #: exist); false: the thresholds only, as upstream.
    adaptive_limit: bool = True
    #: Seconds one scrape may take; None = `staleness`.
    scrape_timeout: _Seconds | None = None
    metrics_path: str = "/metrics"


class HealthSettings(_Model):
    """Passive health: when a backend is taken out of service and how it comes back.

    Any saturation type. A failed connect takes a backend out at once; resets and 5xx
    answers (before any byte was relayed) do after `failure_threshold` in a row. An
    out-of-service backend gets no traffic until its `probe_path` answers below 500;
    the first probe comes `probe_backoff` seconds after it went out, and each failed
    probe doubles the wait up to `max_probe_backoff`.
    """

    failure_threshold: Annotated[int, Field(ge=1)] = 5
    probe_path: str = "/health"
    probe_backoff: _Seconds = 1.0
    max_probe_backoff: _Seconds = 30.0
    probe_timeout: _Seconds = 2.0

    @field_validator("probe_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"probe_path must start with '/', got {value!r}")
        return value


class ConcurrencySettings(_Model):
    """Saturation from the gateway's own count of requests in flight per backend."""

    type: Literal["concurrency"]
    max_in_flight: Annotated[int, Field(ge=1)] = 100


class AdaptiveSettings(_Model):
    """Saturation from a per-backend concurrency limit learned from time to first token."""

    type: Literal["adaptive"] = "adaptive"
    #: The limit of a backend before anything is known about it.
    initial_limit: Annotated[int, Field(ge=1)] = 8
    min_limit: Annotated[int, Field(ge=1)] = 1
    max_limit: Annotated[int, Field(ge=1)] = 1024
    #: A first token later than this many times the backend's recent best is a sign
    #: the request waited in the engine's own queue.
    ttft_tolerance: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 2.0
    #: Also read vLLM/SGLang /metrics when a backend has them: a backend whose engine
    #: shows requests waiting takes nothing more until its queue is empty.
    use_metrics: bool = True
    scrape_interval: _Seconds = 0.05
    #: Metrics older than this are ignored (the TTFT signals still apply).
    staleness: _Seconds = 1.0
    scrape_timeout: _Seconds | None = None
    metrics_path: str = "/metrics"

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveSettings:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"need min_limit <= initial_limit <= max_limit, got {self.min_limit}, "
                f"{self.initial_limit}, {self.max_limit}"
            )
        return self


def _check_backend(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a backend must be an http(s) URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a backend URL takes no query or fragment, got {url!r}")
    # Request paths already start with /v1, so a base path must not end with '/'.
    base = url.rstrip("/")
    if base.endswith("/v1"):
        # The OpenAI client's base URL is the common mistake: /v1/v1/chat/completions
        # would answer 404, and /v1/metrics would never be scraped.
        raise ValueError(
            f"a backend is the server's base URL without the /v1 (the gateway appends the "
            f"request path, e.g. /v1/chat/completions): use {base[:-3]!r}, got {url!r}"
        )
    return base


class PoolSettings(_Model):
    """A set of backends serving some models, with its own controller and detector."""

    name: str
    models: list[str] = Field(default_factory=lambda: ["*"])
    backends: list[str] = Field(default_factory=list)
    #: Requests for models no pool names go here.
    default: bool = False
    saturation: Annotated[
        AdaptiveSettings | UtilizationSettings | ConcurrencySettings,
        Field(discriminator="type"),
    ] = AdaptiveSettings()
    health: HealthSettings = Field(default_factory=HealthSettings)
    #: How prompt tokens are estimated before dispatch: ``chars`` (text length / 4, no
    #: I/O) or ``tokenize`` (ask a backend's vLLM-style ``/tokenize``; one extra round
    #: trip per request, ``chars`` when it fails). The response's usage corrects either.
    token_estimate: Literal["chars", "tokenize"] = "chars"
    #: When a request is about to wait and no slot is free, take back a lower-priority
    #: streamed request whose answer has not started and queue it again (its client
    #: only sees a later first token).
    preemptive_requeue: bool = True
    #: Add vLLM's ``priority`` request field (lower is served first, so the request's
    #: priority negated), for engines started with ``--scheduling-policy priority``.
    forward_priority: bool = False
    #: How often one request may be taken back; then it keeps its slot.
    max_requeues: Annotated[int, Field(ge=0)] = 1
    #: Key sent to this pool's backends as ``Authorization: Bearer`` (vLLM ``--api-key``)
    #: instead of the client's; or the name of an environment variable holding it.
    api_key: str | None = None
    api_key_env: str | None = None
    #: ``resume``: when no request can be taken back, pause a running sheddable
    #: (negative-priority) plain-text request for non-negative work and continue it
    #: later where it stopped (the backends must continue a partial answer: vLLM and
    #: SGLang do; see docs/design.md). ``off``: never pause.
    preemption: Literal["resume", "off"] = "resume"
    #: How often one request may be paused.
    max_pauses: Annotated[int, Field(ge=0)] = 2
    #: Last resort, opt-in: when no request can be taken back or paused, end a running
    #: stream of priority below `evict_below_priority` (and below the arriving request's)
    #: with an SSE ``error`` event, so the higher-priority request gets its slot. The
    #: evicted client keeps what it was sent and sees an error (see docs/design.md).
    evict_streams: bool = False
    #: Only streams of a lower priority are evicted (default 0: sheddable work).
    evict_below_priority: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"pool names match {NAME_PATTERN.pattern}, got {value!r}")
        return value

    @field_validator("backends")
    @classmethod
    def _backends(cls, value: list[str]) -> list[str]:
        urls = [_check_backend(u) for u in value]
        if len(set(urls)) != len(urls):
            raise ValueError(f"backends are listed twice: {urls!r}")
        return urls

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if not value or any(not m for m in value):
            raise ValueError(f"models must be a non-empty list of names or patterns, got {value!r}")
        return value


class ObjectiveSettings(_Model):
    """A named objective a client picks by header; it sets the request's priority."""

    name: str
    priority: int

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"objective names match {NAME_PATTERN.pattern}, got {value!r}")
        return value


class ServerSettings(_Model):
    """Listening address, request limits, upstream timeouts, drain and auth."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1)] = 16 * 1024 * 1024
    #: Request bodies held in memory at once, all requests together (read, queued or
    #: being relayed); a request that would exceed it gets 503.
    body_memory_budget: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024
    #: A non-streamed answer up to this size is buffered and sent with a content-length;
    #: a larger one is relayed as it arrives.
    max_buffered_response_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    #: Request line plus headers; larger gets 431 and the connection is closed.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    #: Seconds a client may take to send a request's line and headers (from connecting,
    #: or from the first byte of a keep-alive request); then 408 and close.
    header_timeout: _Seconds = 10.0
    #: Seconds a client may take to send a request's body once its headers are in.
    body_timeout: _Seconds = 60.0
    #: Seconds an idle keep-alive connection is kept open (whole seconds, rounded up).
    keep_alive_timeout: _Seconds = 30.0
    #: Client connections open at once; beyond it, the connection that has waited
    #: longest without sending a complete request head is closed to make room, and
    #: with none, the new one is refused at once (503). None: half the process's
    #: file-descriptor limit (the other half serves upstream connections).
    max_connections: Annotated[int, Field(ge=1)] | None = None
    #: The HTTP/1.1 server facing clients: ``builtin`` (`sluicegate.asgi.HttpServer`,
    #: the lighter) or ``uvicorn`` (with the same limits), to fall back on.
    http: Literal["builtin", "uvicorn"] = "builtin"
    #: Cap on the per-request TTL a client may ask for with `x-sluicegate-ttl-ms`.
    max_ttl: _Seconds = 600.0
    #: Seconds in-flight requests may take to finish after SIGTERM.
    drain_grace: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0
    connect_timeout: _Seconds = 5.0
    #: Seconds between two bytes from a backend; None = no limit.
    read_timeout: _Seconds | None = 600.0
    #: When set, /metrics and /debug/* require `Authorization: Bearer <token>`.
    auth_token: str | None = None


class MetricsSettings(_Model):
    """Prometheus naming and label cardinality."""

    prefix: str = "inference_extension_flow_control_"
    #: Distinct fairness ids given their own label; later ones are reported as `other`.
    max_fairness_ids: Annotated[int, Field(ge=1)] = 100

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
            raise ValueError(f"not a valid Prometheus metric prefix: {value!r}")
        return value


class GatewayConfig(_Model):
    """The whole gateway configuration (the YAML file's top level)."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    pools: list[PoolSettings]
    flow_control: FlowControlSection = Field(default_factory=dict, validate_default=True)
    objectives: list[ObjectiveSettings] = Field(default_factory=list)
    #: Who may claim which fairness id and objective (see `_auth`).
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        names = [p.name for p in self.pools]
        if not names:
            raise ValueError("pools: at least one pool is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"pools: names must be unique, got {names!r}")
        defaults = [p.name for p in self.pools if p.default]
        if len(defaults) > 1:
            raise ValueError(f"pools: at most one pool may be the default, got {defaults!r}")
        objectives = [o.name for o in self.objectives]
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives: names must be unique, got {objectives!r}")
        for key in self.auth.keys:
            named = [*(key.objectives or ()), *filter(None, [key.default_objective])]
            unknown = sorted(set(named) - set(objectives))
            if unknown:
                raise ValueError(
                    f"auth.keys: tenant {key.tenant} names unknown objectives {unknown}"
                )
        both = [p.name for p in self.pools if p.api_key is not None and p.api_key_env is not None]
        if both:
            raise ValueError(f"pools {both}: give api_key or api_key_env, not both")
        return self

    def pool_keys(self) -> dict[str, str | None]:
        """Pool name -> the key its backends get (env vars read now).

        Raises:
            sluicegate.ConfigError: an `api_key_env` variable is unset.
        """
        out: dict[str, str | None] = {}
        for pool in self.pools:
            key = pool.api_key
            if pool.api_key_env is not None:
                key = os.environ.get(pool.api_key_env) or None
                if key is None:
                    raise sg.ConfigError(
                        f"pools[{pool.name}].api_key_env: {pool.api_key_env} is not set"
                    )
            out[pool.name] = key
        return out

    @property
    def priorities(self) -> frozenset[int]:
        """The priorities the objectives name, plus 0 (the default)."""
        return frozenset({0, *(o.priority for o in self.objectives)})

    @classmethod
    def simple(
        cls,
        backends: list[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_in_flight: int | None = None,
    ) -> GatewayConfig:
        """One default pool serving every model from `backends`.

        Args:
            backends: base URLs of OpenAI-compatible servers.
            host: listening address.
            port: listening port.
            max_in_flight: use a fixed concurrency limit per backend instead of the
                adaptive (learned) one.

        Raises:
            GatewayConfigError: a value is invalid.
        """
        saturation: dict[str, Any] = (
            {"type": "adaptive"}
            if max_in_flight is None
            else {"type": "concurrency", "max_in_flight": max_in_flight}
        )
        raw = {
            "server": {"host": host, "port": port},
            "pools": [{"name": "default", "backends": backends, "saturation": saturation}],
        }
        return parse_config(raw, source="command line")


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("adaptive", "utilization", "concurrency"):
            continue  # pydantic's discriminator tag, not a field the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_UNKNOWN_KEY = "Extra inputs are not permitted"


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid gateway configuration"]
    for err in exc.errors(include_url=False):
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "unexpected_keyword_argument":
            msg = _UNKNOWN_KEY  # a key of a core dataclass, worded as for the models
        lines.append(f"  {source}: {_loc(tuple(err['loc']))}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(raw: object, *, source: str = "<config>") -> GatewayConfig:
    """Validate an already-parsed document.

    Raises:
        GatewayConfigError: a value is invalid; the message names source, field and value.
    """
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise GatewayConfigError(_describe(exc, source)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML configuration file.

    Raises:
        GatewayConfigError: the file is unreadable, not YAML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError(f"{source}: cannot read the configuration: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GatewayConfigError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    return parse_config(raw, source=source)
