"""Who may claim which priority: API keys, tenants, token budgets, trusted peers.

Modes (``auth.mode``):

* ``open`` (default): the client's classification headers are taken as they are.
* ``keys``: ``Authorization: Bearer <key>`` is required; the key names the tenant (the
  fairness id) and the objectives it may use. Client headers cannot change either.
* ``trusted``: classification headers count only from trusted peers (source CIDRs or a
  shared secret header); from anyone else the request is the default flow.

Keys are never stored or compared as text: the presented key is hashed with SHA-256
and the digest is looked up in a dict of configured digests. The only secret-dependent
work is hashing the presented key (its time depends on its length, which the client
chose, not on any configured key); the lookup then compares digests, and a timing
difference there reveals at most how many leading bytes of a SHA-256 digest match,
which does not help find a preimage. So no timing leaks anything about a configured key.

Per-tenant ceilings (`max_in_flight`, `max_queued`) and weights become core flow-group
properties (`sluicegate.TenantLimits`, `flow_weights`), so the scheduler enforces them.
The token budget (`tokens_per_minute`) is a continuously refilled bucket per tenant,
checked at admission and charged with the tokens flow control charges (estimate at
dispatch, corrected to actual usage when the request ends).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import sluicegate as sg

from ._classify import (
    DEFAULT_FAIRNESS_ID,
    FAIRNESS_HEADERS,
    OBJECTIVE_HEADERS,
    Classification,
    classify,
)
from ._errors import GatewayError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "SECRET_HEADER",
    "Auth",
    "AuthSettings",
    "KeySettings",
    "TokenBudget",
    "TrustedSettings",
    "check_exposure",
]

_log = logging.getLogger("sluicegate.gateway")

SECRET_HEADER: Final = b"x-sluicegate-gateway-secret"
#: Headers never forwarded when auth is on: the client's credentials and claims.
_STRIPPED: Final = frozenset(
    {b"authorization", SECRET_HEADER, *FAIRNESS_HEADERS, *OBJECTIVE_HEADERS}
)
_TENANT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}\Z")
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}\Z")
#: Untrusted peers remembered (to log each once, and to cache CIDR verdicts).
_PEER_MEMORY: Final = 4096


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySettings(_Model):
    """One API key: the tenant it stands for, what it may claim, and its limits."""

    #: Hex SHA-256 of the key (``printf %s "$KEY" | sha256sum``).
    key_sha256: str | None = None
    #: Or: the name of an environment variable holding the key itself.
    key_env: str | None = None
    tenant: str
    #: Objectives this key may use; None = all.
    objectives: list[str] | None = None
    #: Objective of a request that names none; None = the first of `objectives`.
    default_objective: str | None = None
    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    max_queued: Annotated[int, Field(ge=0)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not _TENANT.match(value):
            raise ValueError(f"tenant names match {_TENANT.pattern}, got {value!r}")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value):
            raise ValueError("key_sha256 must be 64 hex digits (the SHA-256 of the key)")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _check(self) -> KeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(
                f"key of tenant {self.tenant}: give exactly one of key_sha256, key_env"
            )
        if (
            self.default_objective is not None
            and self.objectives is not None
            and self.default_objective not in self.objectives
        ):
            raise ValueError(
                f"key of tenant {self.tenant}: default_objective {self.default_objective!r} "
                f"is not one of its objectives {self.objectives!r}"
            )
        return self

    @property
    def limits(self) -> tuple[float | None, int | None, int | None, int | None]:
        return self.weight, self.max_in_flight, self.max_queued, self.tokens_per_minute


class TrustedSettings(_Model):
    """Peers whose classification headers are believed (mode ``trusted``)."""

    source_cidrs: list[str] = Field(default_factory=list)
    #: Environment variable holding the secret of header ``x-sluicegate-gateway-secret``.
    secret_env: str | None = None

    @field_validator("source_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {cidr!r}") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> TrustedSettings:
        if not self.source_cidrs and self.secret_env is None:
            raise ValueError("trusted: give source_cidrs, secret_env or both")
        return self


class _KeysFile(_Model):
    keys: list[KeySettings]


class AuthSettings(_Model):
    """The ``auth`` section."""

    mode: Literal["open", "keys", "trusted"] = "open"
    keys: list[KeySettings] = Field(default_factory=list)
    #: A YAML file with ``keys: [...]`` (same entries), re-read on change.
    keys_file: str | None = None
    trusted: TrustedSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> AuthSettings:
        if self.mode == "keys" and not self.keys and self.keys_file is None:
            raise ValueError("mode keys needs keys, keys_file or both")
        if self.mode == "trusted" and self.trusted is None:
            raise ValueError("mode trusted needs a trusted section")
        return self


@final
@dataclass(frozen=True, slots=True)
class _Identity:
    tenant: str
    objectives: frozenset[str] | None
    default_objective: str | None


@final
class TokenBudget:
    """A bucket of `per_minute` tokens, refilled continuously; it may go into debt (a
    request's actual usage is known only at its end). Admission needs a positive level."""

    __slots__ = ("at", "level", "per_minute", "rate")

    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.per_minute, self.level + (now - self.at) * self.rate)
            self.at = now

    def retry_after(self, now: float) -> int | None:
        """None when a request may start now, else whole seconds until it may."""
        self._refill(now)
        if self.level > 0:
            return None
        return max(1, math.ceil((1.0 - self.level) / self.rate))

    def spend(self, tokens: int, now: float) -> None:
        self._refill(now)
        self.level = min(self.per_minute, self.level - tokens)


def _env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise sg.ConfigError(f"{what}: environment variable {name} is not set or empty")
    return value


def _digest_of(entry: KeySettings) -> bytes:
    if entry.key_sha256 is not None:
        return bytes.fromhex(entry.key_sha256)
    key = _env(entry.key_env or "", f"key of tenant {entry.tenant}")
    return hashlib.sha256(key.encode()).digest()


def _read_keys_file(path: str) -> list[KeySettings]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return _KeysFile.model_validate(raw).keys
    except (OSError, yaml.YAMLError) as exc:
        raise sg.ConfigError(f"auth.keys_file {path}: cannot read it: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise sg.ConfigError(f"auth.keys_file {path}: {where}: {first['msg']}") from None


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip()
            return None
    return None


@final
class Auth:
    """The authentication state of one configuration (rebuilt on reload).

    Args:
        settings: the ``auth`` section.
        objectives: objective name -> priority (to check what keys may claim).
        pool_keys: pool name -> the key to send to its backends (None: the client's
            Authorization in mode open, none otherwise).
        previous: the state being replaced; token budgets of tenants that stay carry on.
        now: loop time, for new token budgets.

    Raises:
        sluicegate.ConfigError: a key file, env var or objective name is wrong.
    """

    def __init__(
        self,
        settings: AuthSettings,
        objectives: Mapping[str, int],
        pool_keys: Mapping[str, str | None],
        *,
        previous: Auth | None = None,
        now: float = 0.0,
    ) -> None:
        self.mode = settings.mode
        self._keys: dict[bytes, _Identity] = {}
        self.tenants: dict[str, sg.TenantLimits] = {}
        self.weights: dict[str, float] = {}
        self._budgets: dict[str, TokenBudget] = {}
        self._classes: dict[tuple[_Identity, str | None], Classification] = {}
        self._pool_auth = {
            name: None if key is None else (b"authorization", b"Bearer " + key.encode())
            for name, key in pool_keys.items()
        }
        #: True when forwarded headers need rewriting (stripping or a pool key).
        self.rewrites = self.mode != "open" or any(self._pool_auth.values())
        self._peers: dict[str, bool] = {}
        if self.mode == "keys":
            self._load_keys(settings, objectives, previous, now)
        self._nets: tuple[Any, ...] = ()
        self._secret: bytes | None = None
        if self.mode == "trusted" and settings.trusted is not None:
            trusted = settings.trusted
            self._nets = tuple(ipaddress.ip_network(c, strict=False) for c in trusted.source_cidrs)
            if trusted.secret_env is not None:
                secret = _env(trusted.secret_env, "auth.trusted.secret_env")
                self._secret = hashlib.sha256(secret.encode()).digest()

    def _load_keys(
        self,
        settings: AuthSettings,
        objectives: Mapping[str, int],
        previous: Auth | None,
        now: float,
    ) -> None:
        entries = list(settings.keys)
        if settings.keys_file is not None:
            entries += _read_keys_file(settings.keys_file)
        limits: dict[str, tuple[float | None, int | None, int | None, int | None]] = {}
        for entry in entries:
            unknown = [o for o in entry.objectives or () if o not in objectives]
            if entry.default_objective is not None and entry.default_objective not in objectives:
                unknown.append(entry.default_objective)
            if unknown:
                raise sg.ConfigError(
                    f"key of tenant {entry.tenant}: unknown objectives {unknown!r} "
                    f"(configured: {sorted(objectives)})"
                )
            if limits.setdefault(entry.tenant, entry.limits) != entry.limits:
                raise sg.ConfigError(
                    f"keys of tenant {entry.tenant} disagree on weight, max_in_flight, "
                    "max_queued or tokens_per_minute: they are the tenant's, give them once"
                )
            digest = _digest_of(entry)
            if digest in self._keys:
                raise sg.ConfigError(f"key of tenant {entry.tenant} is listed twice")
            allowed = None if entry.objectives is None else frozenset(entry.objectives)
            default = entry.default_objective
            if default is None and entry.objectives:
                default = entry.objectives[0]
            self._keys[digest] = _Identity(entry.tenant, allowed, default)
        old = {} if previous is None else previous._budgets
        for tenant, (weight, max_in_flight, max_queued, per_minute) in limits.items():
            if weight is not None:
                self.weights[tenant] = weight
            if max_in_flight is not None or max_queued is not None:
                self.tenants[tenant] = sg.TenantLimits(max_in_flight, max_queued)
            if per_minute is not None:
                budget = old.get(tenant)
                if budget is None or budget.per_minute != per_minute:
                    budget = TokenBudget(per_minute, now)
                self._budgets[tenant] = budget

    def flow_control(self, config: sg.FlowControlConfig) -> sg.FlowControlConfig:
        """`config` with the tenants' ceilings and weights added (the keys' win)."""
        if not self.tenants and not self.weights:
            return config
        weights = {**config.flow_weights, **self.weights}
        tenants = {**config.tenants, **self.tenants}
        return dataclasses.replace(config, flow_weights=weights, tenants=tenants)

    # -- per request ----------------------------------------------------------------------

    def classify(
        self,
        scope: dict[str, Any],
        objectives: Mapping[str, int],
        max_ttl: float,
        now: float | None = None,
    ) -> Classification:
        """Classify a request as its credentials allow. `now` (the loop clock, read
        when None) is needed only by a tenant with a token budget.

        Raises:
            GatewayError: 401 (key missing or unknown), 403 (objective not allowed), 429
                (token budget spent, with Retry-After), 400 (malformed header).
        """
        headers = scope["headers"]
        if self.mode == "open":
            return classify(headers, objectives, max_ttl)
        if self.mode == "trusted":
            if self._trusts(scope):
                return classify(headers, objectives, max_ttl)
            return Classification(DEFAULT_FAIRNESS_ID, 0, None, None, None)
        who = self.authenticate(headers)
        claimed = classify(headers, objectives, max_ttl)
        objective = claimed.objective or who.default_objective
        if who.objectives is not None and objective not in who.objectives:
            raise GatewayError(
                403,
                f"tenant {who.tenant} may not use objective {objective!r}; "
                f"allowed: {sorted(who.objectives)}",
                type="permission_error",
                code="objective_not_allowed",
                param="x-gateway-inference-objective",
            )
        budget = self._budgets.get(who.tenant)
        if budget is not None and (wait := budget.retry_after(_clock(now))) is not None:
            raise GatewayError(
                429,
                f"tenant {who.tenant} has used its tokens_per_minute={budget.per_minute}",
                type="rate_limit_error",
                code="tokens_per_minute_exceeded",
                retry_after=wait,
            )
        if claimed.ttl is None and claimed.slo is None:
            # The common case is one of few values per key: built once (bounded by keys
            # x configured objectives; an unknown objective name is not cached).
            known = self._classes.get((who, objective))
            if known is not None:
                return known
        priority = objectives.get(objective, 0) if objective is not None else 0
        cls = Classification(who.tenant, priority, objective, claimed.ttl, claimed.slo)
        if cls.ttl is None and cls.slo is None and (objective is None or objective in objectives):
            self._classes[who, objective] = cls
        return cls

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> _Identity:
        """The identity of the request's bearer key (mode keys only).

        Raises:
            GatewayError: 401 ``invalid_api_key`` (missing or unknown key).
        """
        key = _bearer(headers)
        who = None if key is None else self._keys.get(hashlib.sha256(key).digest())
        if who is None:
            raise GatewayError(
                401,
                "a valid API key is required: 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        return who

    def _trusts(self, scope: dict[str, Any]) -> bool:
        if self._secret is not None:
            for name, value in scope["headers"]:
                if name == SECRET_HEADER:
                    if hmac.compare_digest(hashlib.sha256(value.strip()).digest(), self._secret):
                        return True
                    break
        client = scope.get("client")
        host = client[0] if client else ""
        verdict = self._peers.get(host)
        if verdict is None:
            verdict = self._in_nets(host)
            if len(self._peers) >= _PEER_MEMORY:
                self._peers.clear()
            self._peers[host] = verdict
            if not verdict:
                _log.warning(
                    "untrusted peer %s: its classification headers are ignored "
                    "(logged once per peer)",
                    host or "-",
                )
        return verdict

    def _in_nets(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._nets)

    def outbound(self, headers: list[tuple[bytes, bytes]], pool: str) -> list[tuple[bytes, bytes]]:
        """The headers to forward to `pool`'s backends: without the client's credentials
        and claims (modes keys and trusted), with the pool's own key if it has one."""
        pool_auth = self._pool_auth.get(pool)
        if self.mode == "open":
            out = [h for h in headers if h[0] != b"authorization"]
        else:
            out = [h for h in headers if h[0] not in _STRIPPED]
        if pool_auth is not None:
            out.append(pool_auth)
        return out

    def spend(self, tenant: str, tokens: int, now: float | None = None) -> None:
        """Charge `tokens` (negative refunds) to `tenant`'s budget, if it has one (`now`:
        the loop clock, read only then when None)."""
        budget = self._budgets.get(tenant)
        if budget is not None and tokens:
            budget.spend(tokens, _clock(now))


def _clock(now: float | None) -> float:
    """`now`, or the loop clock: read only where a budget needs it (three reads per
    request were 2-3 % of the gateway's CPU in a profile, budgets or not)."""
    return asyncio.get_running_loop().time() if now is None else now


def check_exposure(host: str, auth_token: str | None) -> None:
    """Refuse to listen beyond loopback while /metrics and /debug are unprotected.

    Raises:
        sluicegate.ConfigError: `host` is not a loopback address and no token is set.
    """
    if auth_token is not None:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise sg.ConfigError(
            f"server.host is {host!r}, which is not a loopback address, and "
            "server.auth_token is not set: /metrics and /debug/* would be open to the "
            "network. Set server.auth_token, or listen on 127.0.0.1."
        )
