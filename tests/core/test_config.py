"""Configuration validation."""

from __future__ import annotations

import math
from typing import Any

import pytest

import sluicegate as sg


def test_defaults_have_a_finite_ttl() -> None:
    """Regression (upstream bug 13): requests never wait forever by default."""
    cfg = sg.FlowControlConfig()
    assert cfg.default_ttl == 30.0
    assert cfg.dynamic_bands is True
    assert cfg.default_band.max_requests == 5000


@pytest.mark.parametrize(
    ("field", "value"),
    [("ordering", "lifo"), ("fairness", "drr"), ("queue", "ring")],
)
def test_unknown_plugin_names_list_known_ones(field: str, value: str) -> None:
    """An unknown name is a config error naming the field and listing the known names."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(sg.UnknownPluginError) as info:
        sg.BandConfig(**kwargs)
    message = str(info.value)
    assert field in message and repr(value) in message
    assert "known names" in message


def test_policy_needing_a_missing_capability_is_an_error() -> None:
    """EDF needs a priority-configurable queue; a FIFO queue cannot serve it."""
    with pytest.raises(sg.IncompatiblePolicyError, match="edf"):
        sg.BandConfig(ordering="edf", queue="fifo")
    assert sg.BandConfig(ordering="edf").queue_name == "heap"
    assert sg.BandConfig(ordering="fcfs").queue_name == "fifo"
    assert sg.BandConfig(ordering="fcfs", queue="heap").queue_name == "heap"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"default_ttl": 0}, "default_ttl"),
        ({"default_ttl": -1.0}, "default_ttl"),
        ({"default_ttl": math.nan}, "default_ttl"),
        ({"no_endpoint_ttl": -2}, "no_endpoint_ttl"),
        ({"max_requests": -1}, "max_requests"),
        ({"max_bytes": 1.5}, "max_bytes"),
        ({"flow_idle_timeout": 0}, "flow_idle_timeout"),
        ({"band_idle_timeout": None}, "band_idle_timeout"),
        ({"dynamic_bands": "yes"}, "dynamic_bands"),
        ({"bands": {"high": sg.BandConfig()}}, "priority"),
        ({"bands": {1: "fast"}}, "bands[1]"),
        ({"default_band": {}}, "default_band"),
    ],
)
def test_invalid_values_name_the_field_and_value(kwargs: dict[str, Any], field: str) -> None:
    """Every validation error names what is wrong."""
    with pytest.raises(sg.ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        sg.FlowControlConfig(**kwargs)


def test_band_limits_are_validated() -> None:
    """Negative or non-int limits are refused; None and 0 are valid."""
    with pytest.raises(sg.ConfigError, match="max_requests"):
        sg.BandConfig(max_requests=-5)
    assert sg.BandConfig(max_requests=None, max_bytes=0).max_bytes == 0


def test_template_for_picks_static_then_negative_then_default() -> None:
    """Static bands keep their config; p < 0 uses the negative template when set."""
    static = sg.BandConfig(fairness="round-robin")
    negative = sg.BandConfig(max_requests=10)
    cfg = sg.FlowControlConfig(bands={5: static}, negative_band=negative)
    assert cfg.template_for(5) is static
    assert cfg.template_for(-3) is negative
    assert cfg.template_for(7) is cfg.default_band
    plain = sg.FlowControlConfig()
    assert plain.template_for(-3) is plain.default_band


def test_config_is_frozen() -> None:
    """Configs are values: bands cannot be changed after validation."""
    cfg = sg.FlowControlConfig(bands={1: sg.BandConfig()})
    with pytest.raises(TypeError):
        cfg.bands[2] = sg.BandConfig()  # type: ignore[index]  # the point of the test


def test_max_utilization_is_validated() -> None:
    """The ceiling is a fraction in (0, 1]."""
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(sg.ConfigError, match="max_utilization"):
            sg.BandConfig(max_utilization=bad)


def test_band_idle_timeout_shorter_than_flow_idle_timeout_is_an_error() -> None:
    """A band is kept band_idle_timeout after its last request; its flows live that long
    too, so a shorter band timeout could never be honoured."""
    with pytest.raises(sg.ConfigError, match="band_idle_timeout"):
        sg.FlowControlConfig(flow_idle_timeout=300.0, band_idle_timeout=60.0)
    sg.FlowControlConfig(flow_idle_timeout=60.0, band_idle_timeout=60.0)
