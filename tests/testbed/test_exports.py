"""The public surface of sluicegate.testbed, and who imports whom."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import sluicegate.testbed


def test_all_names_import_from_the_public_module() -> None:
    """Every name in __all__ exists; classes and functions report the public module."""
    for name in sluicegate.testbed.__all__:
        obj = getattr(sluicegate.testbed, name)
        # Classes and functions only: `Mode` is a typing alias, which has no home of its own.
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__module__ == "sluicegate.testbed", name


def _imported_modules(package: str) -> set[str]:
    root = Path(sluicegate.testbed.__file__).parent.parent / package
    found: set[str] = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def test_demo_and_bench_share_the_testbed_not_each_other() -> None:
    """Neither imports the other (nor the testbed's private modules); both use the testbed."""
    demo, bench = _imported_modules("demo"), _imported_modules("bench")
    assert not {m for m in demo if m.startswith("sluicegate.bench")}
    assert not {m for m in bench if m.startswith("sluicegate.demo")}
    assert not {m for m in demo | bench if m.startswith("sluicegate.testbed._")}
    assert "sluicegate.testbed" in demo
    assert "sluicegate.testbed" in bench
