"""`sluicegate demo` as a process: short runs on loopback, the report, Ctrl-C, bad ports."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from rich.console import Console

from sluicegate.demo import DemoOptions, run_demo, summarize_demo, write_report

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sluicegate", "demo", *args]


def env() -> dict[str, str]:
    # No terminal: the demo prints plain status lines, which these tests read.
    return {**os.environ, "COLUMNS": "120", "TERM": "dumb"}


def report_data(path: Path) -> dict[str, Any]:
    html = path.read_text(encoding="utf-8")
    match = re.search(r'id="sluicegate-demo-data">(.*?)</script>', html, re.S)
    assert match is not None
    data: dict[str, Any] = orjson.loads(match.group(1))
    return data


def check_outcomes(run: dict[str, Any]) -> None:
    """Every sent request ended with exactly one outcome."""
    outcomes = run["request_outcomes"]
    assert len(outcomes) == run["sent"]
    assert all(isinstance(o, str) and o for o in outcomes)
    assert sum(run["outcomes"].values()) == run["sent"]


def test_short_run_without_comparison(tmp_path: Path) -> None:
    """A few seconds with flow control only: exit 0, a report, every request accounted for."""
    out = tmp_path / "report.html"
    proc = subprocess.run(
        demo_command("--duration", "3", "--no-compare", "--backends", "2", "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=50,
        env=env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Report: {out}" in proc.stdout.replace("\n", "")
    assert "[flow control on]" in proc.stdout
    data = report_data(out)
    assert [r["label"] for r in data["runs"]] == ["unloaded", "flow control on"]
    for run in data["runs"]:
        check_outcomes(run)
    assert data["runs"][1]["sent"] > 0


def test_both_runs(tmp_path: Path) -> None:
    """With and without flow control: both runs in the report, outcomes complete."""
    out = tmp_path / "report.html"
    proc = subprocess.run(
        demo_command("--duration", "2", "--backends", "2", "--seed", "3", "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=55,
        env=env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = report_data(out)
    labels = [r["label"] for r in data["runs"]]
    assert labels == ["unloaded", "flow control on", "flow control off"]
    on, off = data["runs"][1:]
    assert on["sent"] == off["sent"] > 0  # the same seeded plan, replayed
    for run in data["runs"]:
        check_outcomes(run)
    html = out.read_text(encoding="utf-8")
    assert html.count("<svg ") == 8


@pytest.mark.asyncio
async def test_ctrl_c_stops_and_still_writes_the_report(tmp_path: Path) -> None:
    """The first SIGINT ends the run early; the summary and report are still written."""
    out = tmp_path / "report.html"
    proc = await asyncio.create_subprocess_exec(
        *demo_command("--duration", "12", "--backends", "2", "--out", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(),
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"[flow control on]" not in await proc.stdout.readline():
                pass
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert b"Report:" in stdout
    data = report_data(out)
    assert data["interrupted"] is True
    assert [r["label"] for r in data["runs"]] == ["unloaded", "flow control on"]
    check_outcomes(data["runs"][1])


def test_a_taken_port_gives_a_clear_message(tmp_path: Path) -> None:
    """A port in use is an error message naming the port, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            demo_command("--duration", "1", "--port", str(port), "--out", str(tmp_path / "r.html")),
            capture_output=True,
            text=True,
            timeout=30,
            env=env(),
            check=False,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.asyncio
async def test_run_demo_in_process_leaves_nothing_behind(tmp_path: Path) -> None:
    """The Python API: a short run, every outcome set, no stray task or warning."""
    options = DemoOptions(duration=1.5, backends=1, compare=False, out=tmp_path / "r.html")
    console = Console(file=io.StringIO(), force_terminal=False)
    result = await run_demo(options, console, asyncio.Event())
    assert result.baseline is not None
    assert [r.label for r in result.runs] == ["flow control on"]
    for run in (result.baseline, *result.runs):
        assert run.records
        assert all(r.outcome is not None for r in run.records)
        assert run.samples
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not [t for t in others if not t.done()]
    path = write_report(options.out, result, summarize_demo(result))
    assert path.stat().st_size > 0
