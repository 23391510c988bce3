"""The demo command before and after its run: --out checked first, unwrapped output."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from click.testing import CliRunner
from rich.table import Table

from sluicegate.cli import main
from sluicegate.demo import _cli

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*_: Any) -> NoReturn:
        raise AssertionError("the demo ran although --out cannot be written")

    monkeypatch.setattr(_cli, "_run", run)


@pytest.mark.usefixtures("never_runs")
def test_out_under_a_file_fails_before_the_run(tmp_path: Path) -> None:
    """The parent 'directory' is a file: only trying the write shows it."""
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["demo", "--out", str(blocker / "report.html")])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output
    assert "cannot write" in result.output


@pytest.mark.usefixtures("never_runs")
def test_out_where_nobody_may_write_fails_before_the_run() -> None:
    """os.access says yes to root everywhere; /proc refuses new files even to root."""
    result = CliRunner().invoke(main, ["demo", "--out", "/proc/sluicegate-report.html"])
    assert result.exit_code == 2, result.output
    assert "cannot write" in result.output


def test_out_in_a_new_directory_is_created_and_left_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent is created at once; the probe write leaves no empty report behind."""
    seen: list[bool] = []

    def run(options: Any, _console: Any) -> NoReturn:
        seen.append(options.out.parent.is_dir() and not options.out.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_run", run)
    out = tmp_path / "new" / "deeper" / "report.html"
    result = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert seen == [True]


def test_without_a_terminal_output_is_not_wrapped_at_80_columns() -> None:
    """Piped into a file or a CI log, sentences and table labels stay on one line."""
    buffer = io.StringIO()
    console = _cli.make_console(file=buffer)
    sentence = "With flow control on, " + "the interactive objective kept its latency " * 4
    console.print(sentence)
    table = Table()
    for name in ("objective and priority", "sent", "completed", "refused (429)", "TTFT p99"):
        table.add_column(name)
    table.add_row("interactive (priority 10)", "1,234", "1,200", "34", ">= 31.0 s")
    console.print(table)
    lines = buffer.getvalue().splitlines()
    assert sentence.strip() in [line.strip() for line in lines]
    assert any("interactive (priority 10)" in line for line in lines)
    assert any("objective and priority" in line for line in lines)
