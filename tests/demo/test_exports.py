"""The public surface: exports, the gateway configs of both modes, the CLI's help."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from click.testing import CliRunner

import sluicegate as sg
import sluicegate.demo
from sluicegate.cli import main
from sluicegate.gateway._pool import Pool
from sluicegate.testbed import Workload, demo_gateway_config

if TYPE_CHECKING:
    from pathlib import Path

    from sluicegate.testbed import Mode


def test_all_names_import_from_the_public_module() -> None:
    """Every name in __all__ exists; classes and functions report the public module."""
    for name in sluicegate.demo.__all__:
        obj = getattr(sluicegate.demo, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or (callable(obj) and module):
            assert module == "sluicegate.demo", name


def test_flow_control_off_never_holds_a_request_back() -> None:
    """Off: 3,000 requests in flight at once, every band, none held; on: held at the slots.

    Runs each mode's pool (its controller and detector, as the gateway builds them) and
    dispatches with `enqueue_nowait`, which raises the moment a request would wait.
    """
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]

    async def dispatched_without_waiting(mode: Mode) -> int:
        config = demo_gateway_config(mode, urls, Workload())
        assert {o.name: o.priority for o in config.objectives} == {
            "interactive": 10,
            "standard": 0,
            "batch": -1,
        }
        pool = Pool(config.pools[0], config.flow_control, asyncio.get_running_loop().time)
        count = 0
        async with pool.controller as controller:
            with contextlib.suppress(sg.WouldBlock):
                for i in range(3000):
                    objective = config.objectives[i % len(config.objectives)]
                    controller.enqueue_nowait(sg.FlowKey(f"tenant-{i % 7}", objective.priority))
                    count += 1
        return count

    assert asyncio.run(dispatched_without_waiting("off")) == 3000
    # The control: with flow control on, dispatch stops at the learned limits of 2 backends.
    assert asyncio.run(dispatched_without_waiting("on")) < 32


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
