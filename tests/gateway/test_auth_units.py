"""Auth without a server: key lookup, objectives, token budgets (literal `now`), trusted
peers, forwarded headers, config validation and the exposure check."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

import sluicegate as sg
from sluicegate.gateway import GatewayConfigError, parse_config
from sluicegate.gateway._auth import Auth, AuthSettings, TokenBudget, check_exposure
from sluicegate.gateway._errors import GatewayError

OBJECTIVES = {"interactive": 10, "standard": 0, "batch": -10}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _auth(**section: Any) -> Auth:
    settings = AuthSettings.model_validate(section)
    return Auth(settings, OBJECTIVES, {"default": None}, now=0.0)


def _scope(*headers: tuple[str, str], client: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": (client, 5555),
    }


KEYS = {
    "mode": "keys",
    "keys": [
        {"key_sha256": _sha("key-a"), "tenant": "team-a", "objectives": ["standard", "batch"]},
        {"key_sha256": _sha("key-b"), "tenant": "team-b", "tokens_per_minute": 600},
    ],
}


def _status(exc: pytest.ExceptionInfo[GatewayError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def test_missing_or_unknown_key_is_401() -> None:
    auth = _auth(**KEYS)
    for headers in [(), (("authorization", "Bearer nope"),), (("authorization", "key-a"),)]:
        with pytest.raises(GatewayError) as exc:
            auth.classify(_scope(*headers), OBJECTIVES, 600.0, 0.0)
        assert _status(exc) == (401, "invalid_api_key")
        assert "key-a" not in exc.value.message


def test_a_key_cannot_claim_another_tenant_or_a_disallowed_objective() -> None:
    auth = _auth(**KEYS)
    cls = auth.classify(
        _scope(("authorization", "bearer key-a"), ("x-gateway-inference-fairness-id", "team-b")),
        OBJECTIVES,
        600.0,
        0.0,
    )
    assert (cls.fairness_id, cls.objective, cls.priority) == ("team-a", "standard", 0)
    with pytest.raises(GatewayError) as exc:
        auth.classify(
            _scope(
                ("authorization", "Bearer key-a"), ("x-gateway-inference-objective", "interactive")
            ),
            OBJECTIVES,
            600.0,
            0.0,
        )
    assert _status(exc) == (403, "objective_not_allowed")
    batch = auth.classify(
        _scope(("authorization", "Bearer key-a"), ("x-gateway-inference-objective", "batch")),
        OBJECTIVES,
        600.0,
        0.0,
    )
    assert batch.priority == -10
    # A key with no objective list may use any, and the client names it.
    b = auth.classify(
        _scope(("authorization", "Bearer key-b"), ("x-gateway-inference-objective", "interactive")),
        OBJECTIVES,
        600.0,
        0.0,
    )
    assert (b.fairness_id, b.priority) == ("team-b", 10)


def test_token_budget_refills_continuously() -> None:
    budget = TokenBudget(600, now=0.0)  # 10 tokens per second
    assert budget.retry_after(0.0) is None
    budget.spend(700, 0.0)  # actual usage can overdraw: level -100
    assert budget.retry_after(0.0) == 11  # (1 - -100) / 10 per s, rounded up
    assert budget.retry_after(10.0) == 1  # level 0: not yet positive
    assert budget.retry_after(10.2) is None
    budget.spend(-10_000, 11.0)  # a refund never exceeds a minute's worth
    assert budget.level == 600


def test_tokens_per_minute_refuses_with_retry_after() -> None:
    auth = _auth(**KEYS)
    scope = _scope(("authorization", "Bearer key-b"))
    auth.classify(scope, OBJECTIVES, 600.0, 0.0)
    auth.spend("team-b", 900, 0.0)
    with pytest.raises(GatewayError) as exc:
        auth.classify(scope, OBJECTIVES, 600.0, 1.0)
    assert _status(exc) == (429, "tokens_per_minute_exceeded")
    assert exc.value.retry_after == 30  # level -290 at t=1: 291 tokens at 10/s
    assert auth.classify(scope, OBJECTIVES, 600.0, 31.0).fairness_id == "team-b"
    auth.classify(_scope(("authorization", "Bearer key-a")), OBJECTIVES, 600.0, 1.0)  # others


def test_budgets_survive_a_reload_for_tenants_that_stay() -> None:
    old = _auth(**KEYS)
    old.spend("team-b", 900, 0.0)
    new = Auth(AuthSettings.model_validate(KEYS), OBJECTIVES, {}, previous=old, now=1.0)
    with pytest.raises(GatewayError):
        new.classify(_scope(("authorization", "Bearer key-b")), OBJECTIVES, 600.0, 1.0)


def test_keys_become_core_tenant_limits_and_weights() -> None:
    auth = _auth(
        mode="keys",
        keys=[
            {"key_sha256": _sha("x"), "tenant": "t", "weight": 2, "max_in_flight": 3},
            {"key_sha256": _sha("y"), "tenant": "t", "weight": 2, "max_in_flight": 3},
        ],
    )
    fc = auth.flow_control(sg.FlowControlConfig())
    assert fc.tenants == {"t": sg.TenantLimits(max_in_flight=3)}
    assert fc.weight_for("t") == 2.0
    with pytest.raises(sg.ConfigError, match="disagree"):
        _auth(
            mode="keys",
            keys=[
                {"key_sha256": _sha("x"), "tenant": "t", "max_queued": 1},
                {"key_sha256": _sha("y"), "tenant": "t", "max_queued": 2},
            ],
        )


def test_key_env_is_read_and_never_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEY", "env-secret")
    auth = _auth(mode="keys", keys=[{"key_env": "TEAM_KEY", "tenant": "t"}])
    cls = auth.classify(_scope(("authorization", "Bearer env-secret")), OBJECTIVES, 600.0, 0.0)
    assert cls.fairness_id == "t"
    assert "env-secret" not in repr(vars(auth))
    monkeypatch.delenv("TEAM_KEY")
    with pytest.raises(sg.ConfigError, match="TEAM_KEY"):
        _auth(mode="keys", keys=[{"key_env": "TEAM_KEY", "tenant": "t"}])


def test_untrusted_peers_are_the_default_flow_and_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_SECRET", "shh")
    auth = _auth(
        mode="trusted", trusted={"source_cidrs": ["10.0.0.0/8"], "secret_env": "GW_SECRET"}
    )
    claim = (
        ("x-gateway-inference-fairness-id", "vip"),
        ("x-gateway-inference-objective", "interactive"),
    )
    with caplog.at_level(logging.WARNING, "sluicegate.gateway"):
        for _ in range(3):
            cls = auth.classify(_scope(*claim, client="192.0.2.7"), OBJECTIVES, 600.0, 0.0)
            assert (cls.fairness_id, cls.priority) == ("default-flow", 0)
    assert sum("192.0.2.7" in r.getMessage() for r in caplog.records) == 1
    inside = auth.classify(_scope(*claim, client="10.1.2.3"), OBJECTIVES, 600.0, 0.0)
    assert (inside.fairness_id, inside.priority) == ("vip", 10)
    wrong = auth.classify(
        _scope(*claim, ("x-sluicegate-gateway-secret", "nope"), client="192.0.2.7"),
        OBJECTIVES,
        600.0,
        0.0,
    )
    assert wrong.fairness_id == "default-flow"
    right = auth.classify(
        _scope(*claim, ("x-sluicegate-gateway-secret", "shh"), client="192.0.2.7"),
        OBJECTIVES,
        600.0,
        0.0,
    )
    assert right.fairness_id == "vip"


def test_forwarded_headers_lose_credentials_and_claims() -> None:
    settings = AuthSettings.model_validate(KEYS)
    auth = Auth(settings, OBJECTIVES, {"default": "backend-key", "other": None}, now=0.0)
    headers = [
        (b"authorization", b"Bearer key-a"),
        (b"x-gateway-inference-fairness-id", b"x"),
        (b"x-llm-d-inference-objective", b"batch"),
        (b"x-sluicegate-gateway-secret", b"s"),
        (b"content-type", b"application/json"),
    ]
    assert auth.outbound(headers, "default") == [
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer backend-key"),
    ]
    assert auth.outbound(headers, "other") == [(b"content-type", b"application/json")]
    opened = Auth(AuthSettings(), OBJECTIVES, {"default": "backend-key"}, now=0.0)
    assert opened.rewrites
    assert opened.outbound(headers, "default")[-1] == (b"authorization", b"Bearer backend-key")
    assert not Auth(AuthSettings(), OBJECTIVES, {"default": None}, now=0.0).rewrites


def test_config_validation_names_the_problem() -> None:
    pools = [{"name": "p", "backends": ["http://127.0.0.1:1"]}]
    with pytest.raises(GatewayConfigError, match="mode keys needs keys"):
        parse_config({"pools": pools, "auth": {"mode": "keys"}})
    with pytest.raises(GatewayConfigError, match="exactly one of key_sha256, key_env"):
        parse_config({"pools": pools, "auth": {"mode": "keys", "keys": [{"tenant": "t"}]}})
    with pytest.raises(GatewayConfigError, match="unknown objectives"):
        parse_config(
            {
                "pools": pools,
                "auth": {"keys": [{"key_env": "K", "tenant": "t", "objectives": ["gold"]}]},
            }
        )
    with pytest.raises(GatewayConfigError, match="not an IP network"):
        parse_config(
            {"pools": pools, "auth": {"mode": "trusted", "trusted": {"source_cidrs": ["x"]}}}
        )
    assert parse_config({"pools": pools}).auth.mode == "open"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "gateway.example"])
def test_a_public_address_needs_an_auth_token(host: str) -> None:
    with pytest.raises(sg.ConfigError, match=r"server\.auth_token"):
        check_exposure(host, None)
    check_exposure(host, "token")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_token(host: str) -> None:
    check_exposure(host, None)
