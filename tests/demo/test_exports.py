"""The public surface: exports, the gateway configs of both modes, the CLI's help."""

from __future__ import annotations

from typing import TYPE_CHECKING

from click.testing import CliRunner

import sluicegate.demo
from sluicegate.cli import main
from sluicegate.demo import Workload, demo_gateway_config

if TYPE_CHECKING:
    from pathlib import Path


def test_all_names_import_from_the_public_module() -> None:
    """Every name in __all__ exists; classes and functions report the public module."""
    for name in sluicegate.demo.__all__:
        obj = getattr(sluicegate.demo, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or (callable(obj) and module):
            assert module == "sluicegate.demo", name


def test_flow_control_off_never_holds_a_request_back() -> None:
    """Off: a concurrency limit no run reaches; on: one batch per backend, capped batch band."""
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    on = demo_gateway_config("on", urls, Workload(), max_in_flight=16)
    off = demo_gateway_config("off", urls, Workload(), max_in_flight=16)
    assert on.pools[0].saturation.type == off.pools[0].saturation.type == "concurrency"
    assert on.pools[0].saturation.max_in_flight == 16
    assert off.pools[0].saturation.max_in_flight >= 100_000
    assert on.server.host == "127.0.0.1"
    assert {o.name: o.priority for o in on.objectives} == {
        "interactive": 10,
        "standard": 0,
        "batch": -1,
    }
    assert on.flow_control.default_band.fairness == "round-robin"


def test_cli_help_lists_the_options() -> None:
    """`sluicegate demo --help` shows every option the README names."""
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--duration", "--backends", "--load", "--seed", "--out", "--no-compare", "--port"):
        assert flag in result.output


def test_cli_refuses_an_unwritable_report_before_running(tmp_path: Path) -> None:
    """A directory as --out is a usage error at once, not after two minutes."""
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "directory" in result.output
