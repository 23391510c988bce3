"""The benchmark scripts' code lives in the package: it runs without `benchmarks/`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sluicegate
from sluicegate.bench.scripts import SCRIPTS, run_script

CHECKOUT = Path(__file__).resolve().parents[2]

PART_ONE = """
import sluicegate
from sluicegate.bench import run_dispatch
result = run_dispatch(quick=True, seconds=0.05)
print(sluicegate.__file__)
print(len(result.raw["cells"]), result.command)
"""


@pytest.mark.e2e
def test_part_one_runs_from_a_package_without_the_benchmarks_directory(tmp_path: Path) -> None:
    """A copy of the package alone, as a wheel installs it, runs the dispatch matrix."""
    site = tmp_path / "site"
    shutil.copytree(Path(sluicegate.__file__).parent, site / "sluicegate")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", PART_ONE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, ran = proc.stdout.splitlines()[-2:]
    assert Path(where).is_relative_to(site)  # the copy ran, not the checkout
    assert not (tmp_path / "benchmarks").exists()
    assert ran.startswith("4 ")
    assert "-m sluicegate.bench.scripts dispatch --quick" in ran


@pytest.mark.e2e
def test_the_wrapper_in_benchmarks_keeps_its_command_line(tmp_path: Path) -> None:
    """`python benchmarks/dispatch.py --quick --write FILE` prints and writes its report."""
    report = tmp_path / "dispatch.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(CHECKOUT / "benchmarks" / "dispatch.py"),
            "--quick",
            "--seconds",
            "0.05",
            "--write",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Machine: ")
    assert "| L | W | P | F | dispatches/s |" in proc.stdout
    text = report.read_text()
    assert text.startswith(
        "# Dispatch benchmark\n\nCommand: `python benchmarks/dispatch.py --quick"
    )
    assert "The matrix is the core issue's" in text


def test_every_wrapper_in_benchmarks_is_thin() -> None:
    """Each moved script is a few lines that call `run_script` with its own name."""
    for name in SCRIPTS:
        text = (CHECKOUT / "benchmarks" / f"{name}.py").read_text()
        code = [ln for ln in text.split('"""')[-1].splitlines() if ln.strip()]
        assert len(code) <= 4, name
        assert f'run_script("{name}")' in text, name


def test_an_unknown_script_is_refused() -> None:
    """A name that is not a script says which ones there are."""
    with pytest.raises(ValueError, match="dispatch"):
        run_script("no-such-benchmark", [])


def test_a_script_takes_its_arguments_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """`run_script(name, argv)` parses `argv`, not this process's command line."""
    run_script("resume_splice", ["--events", "400"])
    out = capsys.readouterr().out
    assert "| splicer, never paused |" in out
    assert "over the split, per event" in out


@pytest.mark.e2e
def test_open_loop_sweep_prints_one_row_per_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """The sweep starts the upstream and the gateway, measures both paths at each rate
    and prints the markdown table (the closed loop's row first)."""
    run_script("open_loop_sweep", ["--rounds", "1", "--seconds", "0.3", "--rates", "100,200"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| rate (req/s) | direct p99 ms | sluicegate p99 ms |")
    assert [row.split(" | ")[0] for row in table[1:]] == ["| closed loop, c=64", "| 100", "| 200"]
    assert "Failed requests: 0." in out
