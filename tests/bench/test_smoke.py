"""A tiny run of each part: processes on loopback, seconds each, no thresholds asserted."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import TYPE_CHECKING

import orjson
import pytest
from click.testing import CliRunner

from sluicegate.bench import OverheadOptions, OverloadOptions
from sluicegate.bench._cli import bench
from sluicegate.bench._dispatch import run_dispatch
from sluicegate.bench._gateway_parts import run_overhead, run_streaming
from sluicegate.bench._overhead import free_port
from sluicegate.bench._overload import run_overload_runs
from sluicegate.bench._quality import quality_figures, run_figures
from sluicegate.gateway import serve_in_background
from sluicegate.testbed import UNFINISHED, demo_gateway_config

if TYPE_CHECKING:
    from pathlib import Path

TINY = OverheadOptions(
    rounds=1,
    latency_requests=20,
    throughput_s=0.2,
    streams=(4,),
    events=5,
    short_events=1,
    gap_ms=5,
    open_loop_s=0.2,
)


@pytest.mark.e2e
def test_dispatch_part_runs_the_matrix_script() -> None:
    """The quick matrix runs in a child process; every cell has a rate and a figure."""
    result = run_dispatch(quick=True, seconds=0.05)
    assert len(result.raw["cells"]) == 4
    assert all(c["rate"] > 0 for c in result.raw["cells"])
    assert result.figures
    assert "| L | W | P | F |" in result.tables[0]


@pytest.mark.e2e
@pytest.mark.parametrize("upstream", ["raw", "aiohttp"])
def test_overhead_part_measures_direct_and_gateway(upstream: str) -> None:
    """Latency, throughput, CPU per request and open-loop series for both paths, and the
    five headline figures; with either upstream server (``--upstream``)."""
    result = run_overhead(dataclasses.replace(TINY, upstream=upstream), command="test")
    assert {"raw": "raw-protocol", "aiohttp": "aiohttp.web"}[upstream] in result.method
    results = result.raw["results"]
    assert {
        "direct p50 ms",
        "sluicegate added p99 ms",
        "sluicegate req/s @64",
        "direct cpu us/req @64",
        "sluicegate cpu us/req @64",
        "sluicegate open-loop added p99 ms",
    } <= set(results)
    assert results["sluicegate cpu us/req @64"][0] > 0
    assert [f.unit for f in result.figures] == ["ms", "ms", "req/s", "us", "ms"]


@pytest.mark.e2e
@pytest.mark.parametrize("upstream", ["raw", "aiohttp"])
def test_streaming_part_counts_every_relayed_event(upstream: str) -> None:
    """N streams of 5 events each: 4 x 5 events relayed, gateway CPU per event measured,
    and (with a second batch of 1-event streams) its marginal and fixed CPU; the aiohttp
    upstream streams the same events as the raw one."""
    result = run_streaming(dataclasses.replace(TINY, upstream=upstream), command="test")
    results = result.raw["results"]
    assert results["events N=4"] == [20.0]
    assert {"gateway marginal us/chunk N=4", "upstream fixed us/stream N=4"} <= set(results)
    assert result.figures[0].value > 0
    assert [f.name.split(",")[0] for f in result.figures] == [
        "gateway CPU per relayed SSE chunk",
        "gateway marginal CPU per extra chunk",
        "gateway fixed CPU per stream",
    ]


@pytest.mark.e2e
def test_overhead_part_measures_a_target_gateway_beside_ours(tmp_path: Path) -> None:
    """--target: another gateway forwarding to the upstream's fixed port is measured too."""
    up_port, other_port = free_port(), free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "sluicegate", "serve", "--backend", f"http://127.0.0.1:{up_port}",
         "--port", str(other_port), "--max-in-flight", "1000", "--log-level", "warning"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert other.stdout is not None
        assert b"listening" in other.stdout.readline()
        options = OverheadOptions(
            rounds=1, latency_requests=20, throughput_s=0.2, open_loop_s=0.2,
            target=f"http://127.0.0.1:{other_port}", backend_port=up_port, target_pid=other.pid,
        )  # fmt: skip
        result = run_overhead(options, command="test")
    finally:
        other.terminate()
        other.wait(timeout=30)
        assert other.stdout is not None
        other.stdout.close()
    results = result.raw["results"]
    assert {"target added p50 ms", "target cpu us/req @64"} <= set(results)
    assert any(f.name.startswith("target:") and f.target is None for f in result.figures)
    # The target's open loop runs at 80 % of its own closed-loop rate, not ours.
    assert results["target open-loop rate req/s"] == [0.8 * results["target req/s @64"][0]]
    assert results["open-loop rate req/s"] == [0.8 * results["sluicegate req/s @64"][0]]
    (p99,) = results["target open-loop p99 ms"]
    (direct,) = results["target open-loop direct p99 ms"]
    assert results["target open-loop added p99 ms"] == [p99 - direct]


@pytest.mark.asyncio
@pytest.mark.parametrize("arrivals", ["poisson", "closed"])
async def test_overload_part_accounts_for_every_request(arrivals: str) -> None:
    """Baseline plus on/off at two loads; every sent request has one outcome."""
    options = OverloadOptions(
        duration=1.0,
        grace_s=0.5,
        baseline_s=0.5,
        backends=1,
        arrivals="closed" if arrivals == "closed" else "poisson",
        loads=(1.0, 2.0) if arrivals == "poisson" else (1.0,),
    )
    runs, baselines = await run_overload_runs(options)
    assert [r.label for r in runs][:2] == ["1x, flow control on", "1x, flow control off"]
    tenants = [t.name for t in options.workload.tenants]
    for r in [*runs, *baselines.values()]:
        assert r.records
        assert all(rec.outcome is not None for rec in r.records)
        figs = run_figures(r, tenants, options.slos)
        assert sum(figs.outcomes.values()) == figs.sent
        assert figs.outcomes.get(UNFINISHED, 0) <= figs.sent
    base = {m: run_figures(r, tenants, options.slos) for m, r in baselines.items()}
    figures = quality_figures([run_figures(r, tenants, options.slos) for r in runs], base)
    assert any(f.name.startswith("work conservation") for f in figures)


@pytest.mark.e2e
def test_cli_runs_one_part_and_writes_json_and_report(tmp_path: Path) -> None:
    """`sluicegate bench streaming --quick` writes the part's JSON, a summary and a report."""
    report = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "sluicegate", "bench", "streaming", "--quick",
         "--results", str(tmp_path), "--report", str(report), "--note", "test run"],
        capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads((tmp_path / "streaming-quick.json").read_bytes())
    assert data["figures"][0]["verdict"] in {"PASS", "MISS"}
    assert (tmp_path / "summary-quick.json").is_file()
    text = report.read_text()
    assert "test run" in text
    assert "## 3. Streaming cost" in text


def test_cli_rejects_bad_cores() -> None:
    """--cores needs two numbers."""
    result = CliRunner().invoke(bench, ["streaming", "--cores", "x"])
    assert result.exit_code == 2
    assert "two core numbers" in result.output


@pytest.mark.asyncio
async def test_overload_part_sends_the_same_plans_to_a_target_gateway() -> None:
    """--target: simulators on fixed ports, the other gateway in front, a baseline of its own."""
    port = free_port()
    options = OverloadOptions(
        duration=1.0, grace_s=0.5, baseline_s=0.5, backends=1, loads=(1.0,), backend_port=port
    )
    config = demo_gateway_config("on", [f"http://127.0.0.1:{port}"], options.workload)
    async with serve_in_background(config) as other:
        assert other.url is not None
        options = dataclasses.replace(options, target=other.url)
        runs, baselines = await run_overload_runs(options)
    assert set(baselines) == {"on", "target"}
    assert [r.mode for r in runs] == ["on", "off", "target"]
    assert all(rec.outcome is not None for rec in runs[-1].records)
