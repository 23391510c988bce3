"""Configuration loading and request classification (no network).

Coroutines only so pytest-asyncio owns the loop (see test_units.py).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

import sluicegate as sg
from sluicegate.gateway import (
    Gateway,
    GatewayConfig,
    GatewayConfigError,
    classify,
    load_config,
    parse_config,
)
from sluicegate.gateway._config import NO_ENDPOINT_TTL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["gateway.yaml", "gateway-full.yaml"])
async def test_example_configs_load(name: str) -> None:
    """The shipped examples are valid, and the minimal one means what the issue says."""
    config = load_config(EXAMPLES / name)
    assert config.priorities >= {0, 10, -1}
    fc = config.flow_control
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


#: A value for every core flow-control setting, none of them its default.
EVERY_SETTING = """
pools: [{name: p}]
flow_control:
  default_ttl: 7
  no_endpoint_ttl: 0
  max_requests: 11
  max_bytes: 12
  default_band:
    ordering: edf
    fairness: round-robin
    queue: heap
    max_requests: 13
    max_bytes: 14
    input_token_weight: 0.5
    output_token_weight: 3
    max_utilization: 0.9
  negative_band: {fairness: token-fair, max_requests: 0}
  bands: {10: {ordering: slo-deadline, max_bytes: null}}
  dynamic_bands: false
  flow_idle_timeout: 15
  band_idle_timeout: 16
  flow_weights: {gold: 3, 'team-*': 2}
  fairness_window: 17
  demand_headroom: false
  tenants: {acme: {max_in_flight: 3, max_queued: 4}}
  displacement: false
  early_reject: false
  early_reject_margin: 0.5
  retry_reservations: false
  retry_grace: 3
"""


def _differs_from_default(value: object, f: dataclasses.Field[object]) -> bool:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    return value != default


@pytest.mark.asyncio
async def test_every_core_setting_reaches_the_controllers(tmp_path: Path) -> None:
    """The flow_control section is the core's own config: each field of
    `FlowControlConfig`, `BandConfig` and `TenantLimits` set in YAML arrives unchanged in
    every pool's controller. A core field added without a YAML value here fails."""
    path = tmp_path / "gw.yaml"
    path.write_text(EVERY_SETTING)
    config = load_config(path)
    async with Gateway(config) as gateway:
        fc = gateway.pools["p"].controller.config
    assert isinstance(fc, sg.FlowControlConfig)
    for f in dataclasses.fields(sg.FlowControlConfig):
        assert _differs_from_default(getattr(fc, f.name), f), f.name
    for f in dataclasses.fields(sg.BandConfig):
        assert _differs_from_default(getattr(fc.default_band, f.name), f), f.name
    for f in dataclasses.fields(sg.TenantLimits):
        assert _differs_from_default(getattr(fc.tenants["acme"], f.name), f), f.name
    assert fc.default_band == sg.BandConfig("edf", "round-robin", "heap", 13, 14, 0.5, 3.0, 0.9)
    assert fc.negative_band == sg.BandConfig(fairness="token-fair", max_requests=0)
    assert dict(fc.bands) == {10: sg.BandConfig(ordering="slo-deadline", max_bytes=None)}
    assert dict(fc.flow_weights) == {"gold": 3.0, "team-*": 2.0}
    assert (fc.default_ttl, fc.no_endpoint_ttl, fc.max_requests, fc.max_bytes) == (7, 0, 11, 12)
    assert (fc.flow_idle_timeout, fc.band_idle_timeout, fc.fairness_window) == (15, 16, 17)
    assert fc.early_reject_margin == 0.5
    assert fc.tenants["acme"] == sg.TenantLimits(max_in_flight=3, max_queued=4)


@pytest.mark.asyncio
async def test_defaults_are_the_cores_but_no_endpoint_ttl() -> None:
    """One definition of each default: the core's. The gateway sets only
    `no_endpoint_ttl` (1 s), also when the section gives other settings; null keeps
    the core's None."""
    core = sg.FlowControlConfig()
    minimal = GatewayConfig.simple(["http://h:1"]).flow_control
    assert minimal == dataclasses.replace(core, no_endpoint_ttl=NO_ENDPOINT_TTL)
    partial = parse_config({"pools": [{"name": "p"}], "flow_control": {"default_ttl": 3}})
    assert partial.flow_control.no_endpoint_ttl == NO_ENDPOINT_TTL
    explicit = parse_config({"pools": [{"name": "p"}], "flow_control": {"no_endpoint_ttl": None}})
    assert explicit.flow_control.no_endpoint_ttl is None
    assert core.no_endpoint_ttl is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ("{typo: 1}", "flow_control.typo", "Extra inputs are not permitted (got 1)"),
        ("{default_band: {typo: 1}}", "flow_control.default_band.typo", "not permitted"),
        ("{tenants: {a: {max_queud: 1}}}", "flow_control.tenants.a.max_queud", "not permitted"),
        ("{default_ttl: -1}", "flow_control", "default_ttl must be a number of seconds > 0"),
        ("{default_ttl: .inf}", "flow_control.default_ttl", "finite number (got inf)"),
        (
            "{max_requests: many}",
            "flow_control.max_requests",
            "unable to parse string as an integer (got 'many')",
        ),
        (
            "{bands: {x: {}}}",
            "flow_control.bands.x",
            "unable to parse string as an integer (got 'x')",
        ),
        (
            "{negative_band: {max_utilization: 1.5}}",
            "flow_control.negative_band",
            "max_utilization must be a number in (0, 1], got 1.5",
        ),
        ("{flow_weights: {a: 0}}", "flow_control", "flow_weights['a'] must be a number > 0"),
        (
            "{flow_idle_timeout: 700}",
            "flow_control",
            "band_idle_timeout=600.0 is shorter than flow_idle_timeout=700.0",
        ),
    ],
)
async def test_flow_control_errors_name_the_setting(
    tmp_path: Path, section: str, field: str, message: str
) -> None:
    """Errors from the core's own checks and from its type hints both name the setting
    (path or message) and the value."""
    path = tmp_path / "gw.yaml"
    path.write_text(f"pools: [{{name: p}}]\nflow_control: {section}\n")
    with pytest.raises(GatewayConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"{path}: {field}" in text
    assert message in text


@pytest.mark.asyncio
async def test_flow_control_round_trips_through_yaml(tmp_path: Path) -> None:
    """A loaded config dumps to YAML that loads to the same config (the core's frozen
    mappings are dumped as plain mappings)."""
    first = parse_config(yaml.safe_load(EVERY_SETTING))
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(first.model_dump(exclude_none=True)))
    assert load_config(path) == first


@pytest.mark.asyncio
async def test_core_config_hints_resolve() -> None:
    """The gateway validates the core dataclasses from their type hints, which must
    resolve although the classes report ``sluicegate`` as their module."""
    for cls in (sg.FlowControlConfig, sg.BandConfig, sg.TenantLimits):
        assert set(typing.get_type_hints(cls)) == {f.name for f in dataclasses.fields(cls)}
