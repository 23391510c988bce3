"""`sluicegate bench epp` in miniature: every process starts, every series is measured."""

from __future__ import annotations

import pytest

from sluicegate.bench._epp import EppOptions, run_epp


@pytest.mark.e2e
def test_epp_part_measures_picker_floor_and_gateway() -> None:
    options = EppOptions(latency_requests=20, throughput_s=0.3, concurrency=4, warmup=5)
    result = run_epp(options, command="test")
    results = result.raw["results"]
    for key in (
        "epp decision p99 ms",
        "epp lifecycles per cpu-s",
        "floor aio-uvloop per cpu-s",
        "floor sluicegate-h2 per cpu-s",
        "emulator-driven lifecycles per cpu-s",
        "gateway req per cpu-s",
        "gateway added p99 ms",
    ):
        assert key in results, key
    assert results["epp lifecycles per cpu-s"] > 0
    assert results["epp decision p99 ms"] > 0
    assert results["epp lean errors"] == 0
    assert [f.unit for f in result.figures] == ["req/s", "req/s", "req/s", "ms", "ms"]
    assert result.figures[0].baseline == results["gateway req per cpu-s"]
