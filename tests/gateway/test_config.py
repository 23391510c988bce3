"""Configuration loading and request classification (no network).

Coroutines only so pytest-asyncio owns the loop (see test_units.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.gateway import GatewayConfig, GatewayConfigError, classify, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["gateway.yaml", "gateway-full.yaml"])
async def test_example_configs_load(name: str) -> None:
    """The shipped examples are valid, and the minimal one means what the issue says."""
    config = load_config(EXAMPLES / name)
    assert config.priorities >= {0, 10, -1}
    fc = config.flow_control.build()
    assert fc.negative_band is not None
    assert fc.negative_band.max_requests == 100


@pytest.mark.asyncio
async def test_minimal_form_defaults() -> None:
    """Pools default to every model and the adaptive (learned) limit."""
    config = GatewayConfig.simple(["http://127.0.0.1:9/"])
    pool = config.pools[0]
    assert pool.backends == ["http://127.0.0.1:9"]
    assert pool.models == ["*"]
    assert pool.saturation.type == "adaptive"
    assert config.flow_control.no_endpoint_ttl == 1.0
    concurrency = GatewayConfig.simple(["http://h:1"], max_in_flight=4)
    assert concurrency.pools[0].saturation.type == "concurrency"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("snippet", "field", "value"),
    [
        ("pools: [{name: p, backends: [ftp://x]}]", "pools[0].backends", "ftp://x"),
        (
            "pools: [{name: p, backends: ['http://h:8000/v1/']}]",
            "pools[0].backends",
            "without the /v1",
        ),
        (
            "pools: [{name: p, saturation: {type: utilization, kv_cache_threshold: 1.5}}]",
            "pools[0].saturation.kv_cache_threshold",
            "1.5",
        ),
        ("pools: [{name: p, typo_field: 1}]", "pools[0].typo_field", "1"),
        (
            "pools: [{name: p}]\nflow_control: {default_band: {ordering: lifo}}",
            "flow_control",
            "'lifo'",
        ),
        ("pools: [{name: p}, {name: p}]", "(top level)", "pools: names must be unique"),
        (
            "pools: [{name: p}]\nobjectives: [{name: 'a b', priority: 1}]",
            "objectives[0].name",
            "a b",
        ),
    ],
)
async def test_errors_name_file_field_and_value(
    tmp_path: Path, snippet: str, field: str, value: str
) -> None:
    """Each error message names the file, the field path and the bad value."""
    path = tmp_path / "gw.yaml"
    path.write_text(snippet)
    with pytest.raises(GatewayConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message
    assert value in message


@pytest.mark.asyncio
async def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    """Missing files and YAML syntax errors are config errors naming the file."""
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [unclosed")
    with pytest.raises(GatewayConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.asyncio
async def test_classification_from_headers() -> None:
    """Fairness id, objective priority, capped TTL and SLO come from the headers."""
    objectives = {"interactive": 10}
    headers = [
        (b"x-llm-d-inference-fairness-id", b"tenant-b"),
        (b"x-gateway-inference-fairness-id", b"tenant-a"),
        (b"x-gateway-inference-objective", b"interactive"),
        (b"x-sluicegate-ttl-ms", b"900000"),
        (b"x-slo-ttft-ms", b"250"),
    ]
    cls = classify(headers, objectives, max_ttl=60.0)
    assert (cls.fairness_id, cls.priority, cls.ttl, cls.slo) == ("tenant-a", 10, 60.0, 0.25)
    cls = classify([(b"x-llm-d-inference-objective", b"unknown")], objectives, max_ttl=60.0)
    assert (cls.fairness_id, cls.priority, cls.objective) == ("default-flow", 0, "unknown")
    assert classify([], objectives, max_ttl=1.0).priority == 0
