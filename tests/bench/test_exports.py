"""The public surface of sluicegate.bench, and the CLI's help."""

from __future__ import annotations

from click.testing import CliRunner

import sluicegate.bench
from sluicegate.cli import main


def test_all_names_import_from_the_public_module() -> None:
    """Every name in __all__ exists; classes and functions report the public module."""
    for name in sluicegate.bench.__all__:
        obj = getattr(sluicegate.bench, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or (callable(obj) and module):
            assert module == "sluicegate.bench", name


def test_bench_help_lists_the_parts_and_options() -> None:
    """`sluicegate bench --help` names every part, --quick and --target."""
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for word in ("dispatch", "overhead", "streaming", "overload", "--quick", "--target"):
        assert word in result.output
