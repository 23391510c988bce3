"""The request record, the typed backend binding and the one upstream-error mapping.

Coroutines only so that pytest-asyncio owns the loop (see test_units.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

import sluicegate as sg
from sluicegate.gateway import (
    Binding,
    ConcurrencyDetector,
    ConcurrencySettings,
    MetricsSettings,
    binding_of,
)
from sluicegate.gateway._errors import GatewayError, GatewayOutcome, error_reply
from sluicegate.gateway._introspect import readiness
from sluicegate.gateway._metrics import FastHistogram, GatewayMetrics
from sluicegate.gateway._record import RequestRecord
from sluicegate.gateway._upstream import (
    KIND_BROKEN,
    KIND_CONNECT,
    KIND_TIMEOUT,
    UPSTREAM_ERRORS,
    UpstreamFailure,
)

_KEY: Any = None  # aiohttp's ConnectionKey; only the error's type matters here


class _Ticket:
    assignment: Any = None


@pytest.mark.asyncio
async def test_the_record_counts_queue_time_from_enqueue_to_leaving() -> None:
    """left_queue turns the wait into queue_s once; the added latency excludes it."""
    record = RequestRecord(arrived_at=10.0)
    assert record.outcome is GatewayOutcome.BYPASSED and not record.dispatched
    assert record.added_s() is None  # no first byte yet
    record.enqueued_at = 0.0  # long ago on the record's clock
    record.left_queue()
    assert record.enqueued_at is None and record.queue_s > 0.0
    waited = record.queue_s
    record.left_queue()  # not waiting any more: nothing changes
    assert record.queue_s == waited
    record.outcome = sg.Outcome.DISPATCHED
    assert record.dispatched
    record.queue_s, record.upstream_s, record.first_byte_at = 0.25, 0.5, 11.0
    assert record.added_s() == pytest.approx(0.25)
    record.first_byte_at = 10.5  # clocks never run backwards, but never report < 0
    assert record.added_s() == 0.0


@pytest.mark.asyncio
async def test_outcome_header_comes_from_the_enum() -> None:
    """Error replies carry the outcome enum's value, the gateway's own or the core's."""
    _, _, headers = error_reply(GatewayError(400, "bad", code="x"), queue_ms=0.0)
    assert (b"x-sluicegate-outcome", b"Invalid") in headers
    _, _, headers = error_reply(sg.QueueFullError("full"), queue_ms=1.0)
    assert (b"x-sluicegate-outcome", b"RejectedCapacity") in headers
    err = GatewayError(502, "x", code="y", outcome=sg.Outcome.DISPATCHED)
    assert (b"x-sluicegate-outcome", b"Dispatched") in error_reply(err, queue_ms=0.0)[2]


@pytest.mark.asyncio
async def test_a_binding_is_typed_and_released_once_per_dispatch() -> None:
    """on_dispatch stores a Binding (backend + epoch); on_release gives the slot back."""
    settings = ConcurrencySettings(type="concurrency", max_in_flight=2)
    detector = ConcurrencyDetector(["http://a"], settings, lambda: 0.0)
    (backend,) = detector.backends.values()
    ticket: Any = _Ticket()
    assert binding_of(ticket) is None
    assert not detector.is_saturated()
    detector.on_dispatch(ticket)
    binding = binding_of(ticket)
    assert isinstance(binding, Binding)
    assert binding == Binding(backend, 0) and backend.in_flight == 1
    detector.on_release(ticket)
    assert backend.in_flight == 0
    ticket.assignment = (backend, 0)  # anything else is not a gateway binding
    assert binding_of(ticket) is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        (aiohttp.ClientConnectorError(_KEY, OSError(111, "refused")), KIND_CONNECT),
        (TimeoutError(), KIND_TIMEOUT),
        (aiohttp.ServerTimeoutError(), KIND_TIMEOUT),
        (aiohttp.ServerDisconnectedError(), KIND_BROKEN),
        (aiohttp.ClientPayloadError("bad chunk"), KIND_BROKEN),
    ],
)
async def test_upstream_errors_map_to_one_failure_of_their_kind(
    raised: BaseException, kind: str
) -> None:
    """aiohttp's and timeout errors become UpstreamFailure(kind, cause)."""
    with pytest.raises(UpstreamFailure) as info, UPSTREAM_ERRORS:
        raise raised
    assert info.value.kind == kind and info.value.cause is raised


@pytest.mark.asyncio
@pytest.mark.parametrize("raised", [ValueError("ours"), asyncio.CancelledError()])
async def test_other_exceptions_pass_the_mapping_unchanged(raised: BaseException) -> None:
    """Bugs and cancellation are never turned into upstream failures."""
    with pytest.raises(type(raised)) as info, UPSTREAM_ERRORS:
        raise raised
    assert info.value is raised


@pytest.mark.asyncio
async def test_readiness_takes_what_it_shows() -> None:
    """readiness needs only the drain flag and the pools (no Gateway)."""
    assert readiness(True, []) == ["draining: the gateway is shutting down"]
    assert readiness(False, []) == []


@pytest.mark.asyncio
async def test_fast_histogram_exposes_cumulative_buckets_like_prometheus_client() -> None:
    """A value on a bound counts in that bucket (le), every later bucket includes it."""
    hist = FastHistogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 5.0):
        hist.observe(value)
    assert hist.buckets() == [("0.001", 2.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert hist.sum == pytest.approx(5.0035)


@pytest.mark.asyncio
async def test_request_series_render_with_their_labels_and_fold_ids_past_the_cap() -> None:
    """Outcome counts and queue histograms keep their names and labels; the second id
    past a cap of one is reported as 'other'."""
    metrics = GatewayMetrics(MetricsSettings(prefix="p_", max_fairness_ids=1), list)
    metrics.record("a", 1, sg.Outcome.DISPATCHED, 0.002)
    metrics.record("b", 1, sg.Outcome.DISPATCHED, 0.002)
    metrics.record("b", 1, sg.Outcome.EVICTED_TTL, 3.0)
    metrics.added_latency.observe(0.0003)
    text = metrics.render().decode()
    assert 'p_requests_total{outcome="Dispatched",priority="1"} 2.0' in text
    assert 'p_requests_total{outcome="EvictedTTL",priority="1"} 1.0' in text
    assert (
        'p_request_queue_duration_seconds_count{fairness_id="other",outcome="Dispatched",'
        'priority="1"} 1.0'
    ) in text
    assert 'p_gateway_added_latency_seconds_bucket{le="0.0005"} 1.0' in text
