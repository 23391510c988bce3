"""The layout rules that keep the core self-contained (scripts/layout.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "layout.py"


def _layout() -> Any:
    """The script as a module (it is no package module: an installed wheel lacks it)."""
    name = "sluicegate_layout_script"
    if name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_package_keeps_every_hard_rule() -> None:
    """The tree as it is: no rule broken (what `make test` checks)."""
    layout = _layout()
    assert layout.check(layout.load(), quiet=True) == []


def test_a_type_only_import_of_the_scheduler_inside_the_core_fails() -> None:
    """A helper of the scheduler referring back to it, even for types, is a broken rule."""
    layout = _layout()
    modules = layout.load()
    modules["sluicegate._core._statistics"].typing.add("sluicegate._core._scheduler")
    assert layout.check(modules, quiet=True) == [
        "a cycle in _core through the scheduler: "
        "sluicegate._core._scheduler <-> sluicegate._core._statistics"
    ]


def test_the_core_may_not_log_or_do_io() -> None:
    """`logging` (or asyncio, time, ...) in `_core` is a broken rule: the shell logs."""
    layout = _layout()
    modules = layout.load()
    modules["sluicegate._core._scheduler"].external.update({"logging", "asyncio"})
    assert layout.check(modules, quiet=True) == [
        "sluicegate._core._scheduler: _core is sans-I/O but imports asyncio, logging"
    ]
