"""The public surface: exports, configuration validation, the CLI's help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import sluicegate.sim
from sluicegate import ConfigError
from sluicegate.cli import main
from sluicegate.sim import FAILURE_TYPES, SimConfig


def test_all_names_import_from_the_public_module() -> None:
    """Every name in __all__ exists; classes and functions report the public module."""
    for name in sluicegate.sim.__all__:
        obj = getattr(sluicegate.sim, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or (callable(obj) and module):
            assert module in ("sluicegate.sim", "typing"), name


def test_config_validation_names_the_field() -> None:
    """Invalid settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="max_num_seqs"):
        SimConfig(max_num_seqs=0)
    with pytest.raises(ConfigError, match="failure_injection_rate"):
        SimConfig(failure_injection_rate=150)
    with pytest.raises(ConfigError, match="failure_types"):
        SimConfig(failure_types=("explode",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="time_factor_under_load"):
        SimConfig(time_factor_under_load=0.5)
    assert SimConfig(model="m").served_names == ("m",)
    assert SimConfig().failure_types == FAILURE_TYPES


def test_cli_help_lists_the_llm_d_flags() -> None:
    """`sluicegate sim --help` shows llm-d-inference-sim's flag names."""
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0, result.output
    for flag in (
        "--port",
        "--model",
        "--served-model-name",
        "--max-num-seqs",
        "--kv-cache-size",
        "--time-to-first-token",
        "--inter-token-latency",
        "--prefill-time-per-token",
        "--time-factor-under-load",
        "--seed",
        "--mode",
        "--replicas",
        "--failure-injection-rate",
        "--failure-types",
        "--freeze-metrics",
        "--scheduling-policy",
        "--max-waiting-queue-length",
    ):
        assert flag in result.output


def test_cli_rejects_bad_values() -> None:
    """Invalid values fail with a usage error, not a traceback."""
    result = CliRunner().invoke(main, ["sim", "--failure-types", "http-500,boom"])
    assert result.exit_code == 2
    assert "boom" in result.output
    result = CliRunner().invoke(main, ["sim", "--max-num-seqs", "0"])
    assert result.exit_code == 2
    assert "max_num_seqs" in result.output
