"""Statistics and the HTML report, from synthetic runs (no servers, no sleeping)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from sluicegate.demo import (
    DemoOptions,
    DemoResult,
    RunResult,
    reading,
    render_report,
    summarize,
    summarize_demo,
    write_report,
)
from sluicegate.testbed import COMPLETED, UNFINISHED, PlannedRequest, RequestRecord, Sample

if TYPE_CHECKING:
    from pathlib import Path

    from sluicegate.testbed import Mode


def fake_run(mode: Mode, label: str, ttft: float, n: int = 40) -> RunResult:
    """A finished run: `n` requests per objective, all with the same TTFT."""
    run = RunResult(mode, label, duration=10.0, planned=3 * n, started_at=100.0, elapsed=12.0)
    index = 0
    for objective, priority in (("interactive", 10), ("standard", 0), ("batch", -1)):
        for i in range(n):
            tenant = "acme" if i % 2 else ("globex", "initech", "umbrella")[i % 3]
            planned = PlannedRequest(index, i * 0.25, tenant, objective, priority, 50, 4)
            record = RequestRecord(planned, sent_at=100.0 + planned.at)
            run.records.append(record)
            index += 1
            if objective == "batch" and mode == "on" and i % 4 == 0:
                record.finish("RejectedCapacity", record.sent_at + 0.001)
                continue
            event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
            for k in range(4):
                record.meter.feed(event, record.sent_at + ttft + 0.02 * k)
            record.meter.feed(b"data: [DONE]\n\n", record.sent_at + ttft + 0.1)
            record.finish(COMPLETED, record.sent_at + ttft + 0.1)
    for k in range(25):
        queued = {10: 0, 0: k % 3, -1: k} if mode == "on" else {10: 0, 0: 0, -1: 0}
        waiting = 0 if mode == "on" else 2 * k
        run.samples.append(Sample(k * 0.5, queued, {10: 1, 0: 4, -1: 3}, 8 * k, 24, waiting, 0.5))
    return run


@pytest.fixture
def demo() -> DemoResult:
    result = DemoResult(DemoOptions(duration=10.0))
    result.baseline = fake_run("on", "unloaded", 0.05, n=5)
    result.runs = [fake_run("on", "flow control on", 0.2), fake_run("off", "flow control off", 8.0)]
    return result


def test_summary_counts_every_request_once(demo: DemoResult) -> None:
    """Outcome counts add up to the requests sent, per run and per objective."""
    for run in demo.runs:
        summary = summarize(run, demo.options.workload)
        assert sum(summary.outcomes.values()) == summary.sent == len(run.records)
        assert sum(sum(p.outcomes.values()) for p in summary.priorities) == summary.sent
        assert sum(t.sent for t in summary.tenants) == summary.sent


def test_reading_reports_the_measured_ratio(demo: DemoResult) -> None:
    """The text quotes the figures: 200 ms vs 8 s is 40x, and 4x the unloaded 50 ms."""
    text = " ".join(reading(summarize_demo(demo), "interactive", "standard"))
    assert "200 ms" in text
    assert "8.0 s, 40x longer" in text
    assert "kept it at 4.0x" in text
    assert "acme" in text


def test_reading_says_when_there_is_no_difference(demo: DemoResult) -> None:
    """Equal figures are not dressed up as a win."""
    demo.runs[1] = fake_run("off", "flow control off", 0.2)
    text = " ".join(reading(summarize_demo(demo), "interactive", None))
    assert "no clear difference" in text


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", html, flags=re.S)]


def embedded(html: str) -> dict[str, Any]:
    match = re.search(
        r'<script type="application/json" id="sluicegate-demo-data">(.*?)</script>', html, re.S
    )
    assert match is not None
    doc: dict[str, Any] = orjson.loads(match.group(1))
    return doc


def test_report_is_self_contained_with_both_runs(demo: DemoResult, tmp_path: Path) -> None:
    """Well-formed SVG charts for both runs, no external resources, the data embedded."""
    path = write_report(tmp_path / "sub" / "report.html", demo, summarize_demo(demo))
    html = path.read_text(encoding="utf-8")
    charts = svgs(html)
    assert len(charts) == 8  # four charts, two runs
    for chart in charts:
        assert chart.tag == "{http://www.w3.org/2000/svg}svg"
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|\bhref=|@import", html)
    assert html.count("http") == html.count('xmlns="http://www.w3.org/2000/svg"')
    assert "flow control on" in html
    assert "flow control off" in html
    data = embedded(html)
    assert [r["label"] for r in data["runs"]] == ["unloaded", "flow control on", "flow control off"]
    for run in data["runs"]:
        assert None not in run["request_outcomes"]
        assert sum(run["outcomes"].values()) == run["sent"] == len(run["request_outcomes"])


def test_report_with_one_run_and_nothing_sent(tmp_path: Path) -> None:
    """A run stopped before its first request still renders."""
    result = DemoResult(DemoOptions(duration=5.0, compare=False), interrupted=True)
    result.runs = [RunResult("on", "flow control on", duration=5.0, planned=10, interrupted=True)]
    html = render_report(result, summarize_demo(result))
    assert len(svgs(html)) == 4
    assert "stopped early" in html


def test_report_stopped_during_the_baseline(tmp_path: Path) -> None:
    """Ctrl-C before the first run: a report with the baseline only, no charts."""
    result = DemoResult(DemoOptions(duration=5.0), interrupted=True)
    result.baseline = fake_run("on", "unloaded", 0.05, n=3)
    html = render_report(result, summarize_demo(result))
    assert "stopped before the first run" in html
    assert svgs(html) == []
    assert [r["label"] for r in embedded(html)["runs"]] == ["unloaded"]


def test_ttft_chart_marks_lower_bounds(demo: DemoResult) -> None:
    """Without flow control, late requests were still waiting when the run ended: their
    TTFT is only a lower bound, and the chart must say so where it plots one."""
    off = demo.runs[1]
    interactive = [r for r in off.records if r.planned.objective == "interactive"]
    for record in interactive[-20:]:  # the last ones: no token by the end of the run
        record.meter = type(record.meter)()
        record.outcome = None
        record.finish(UNFINISHED, record.sent_at + 30.0)
    html = render_report(demo, summarize_demo(demo))
    ttft_off = next(
        c
        for c in svgs(html)
        if "TTFT" in (c.get("aria-label") or "") and "off" in c.get("aria-label", "")
    )
    ttft_on = next(
        c
        for c in svgs(html)
        if "TTFT" in (c.get("aria-label") or "") and "on" in c.get("aria-label", "").split(", ")[-1]
    )
    marks = [e for e in ttft_off.iter() if e.get("class") == "lower-bound"]
    assert marks
    assert all("at least" in ET.tostring(m, encoding="unicode") for m in marks)
    assert "at least" in ET.tostring(ttft_off, encoding="unicode")
    assert not [e for e in ttft_on.iter() if e.get("class") == "lower-bound"]
