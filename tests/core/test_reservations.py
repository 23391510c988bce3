"""Retry-After as a promise (`_core/_reservations.py`), in literal time."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import sluicegate as sg
from sluicegate._core._reservations import (
    EARLY,
    MAX_DELAY,
    OUTFLOW_WINDOW,
    SAFETY,
    Reservations,
    advised_delay,
)
from sluicegate._core._scheduler import Scheduler
from sluicegate._core._ticket import State
from sluicegate.testing import ManualDetector

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


def _full_band(
    make: Callable[..., Harness], limit: int = 2, *, grace: float = 2.0, on: bool = True
) -> Harness:
    """Band 0 with `limit` places, full at t=1; 20 requests left its queue in [0, 1), so
    it drains 2 a second (over the 10 s window)."""
    config = sg.FlowControlConfig(
        bands={0: sg.BandConfig(max_requests=limit)}, retry_grace=grace, retry_reservations=on
    )
    h = make(config)
    for i in range(20):
        h.submit("warm", 0, now=i / 20)
        h.dispatch_one(now=i / 20)
    for _ in range(limit):
        h.submit("q", 0, now=1.0)
    return h


def _refuse(h: Harness, fid: str, now: float) -> sg.QueueFullError:
    with pytest.raises(sg.QueueFullError) as caught:
        h.submit(fid, 0, now=now)
    return caught.value


def test_full_band_promises_a_place_after_its_delay(make: Callable[..., Harness]) -> None:
    """Full, draining 2/s: one request must leave, 0.5 s (x SAFETY 1.5), advised as
    1 s and promised then. The place that frees meanwhile is kept from a fresh arrival
    for the retry."""
    h = _full_band(make)
    refusal = _refuse(h, "r", 1.0)
    assert refusal.retry_after == 1 and refusal.reserved and refusal.retry == "reserved"
    assert h.core.reservations.outstanding == 1
    h.dispatch_one(now=1.5)  # one place frees
    assert "1 places promised" in str(_refuse(h, "fresh", 1.6))
    retry = h.submit("r", 0, now=2.0)  # 1 s after the refusal
    assert retry.state is State.QUEUED
    r = h.core.reservations
    assert (r.made, r.honoured, r.lapsed, r.outstanding) == (2, 1, 0, 1)  # "fresh" holds one


def test_a_claimed_place_is_kept_from_the_flow_s_other_requests(
    make: Callable[..., Harness],
) -> None:
    """A flow is often a whole tenant: with a claim (the gateway's body digest), only
    the refused request itself redeems its place, not the tenant's next request."""
    h = _full_band(make)
    args = (0, None, None, 1.0, h.gate)
    with pytest.raises(sg.QueueFullError) as caught:
        h.core.submit(sg.FlowKey("tenant", 0), *args, claim=lambda: b"first")
    assert caught.value.retry_after == 1
    h.dispatch_one(now=1.5)
    later = (0, None, None, 2.0, h.gate)
    with pytest.raises(sg.QueueFullError):
        h.core.submit(sg.FlowKey("tenant", 0), *later, claim=lambda: b"another")
    retry = h.core.submit(sg.FlowKey("tenant", 0), *later, claim=lambda: b"first")
    assert retry.state is State.QUEUED
    assert h.core.reservations.honoured == 1


def test_a_retry_before_its_window_is_a_fresh_arrival(make: Callable[..., Harness]) -> None:
    h = _full_band(make)
    _refuse(h, "r", 1.0)
    h.dispatch_one(now=1.1)
    _refuse(h, "r", 1.0 + 1 - EARLY - 0.01)  # the held place is not its yet
    assert h.core.reservations.honoured == 0


def test_an_unused_promise_lapses_after_its_grace(make: Callable[..., Harness]) -> None:
    """The window closes at refusal + delay + grace; the next look drops it, and the
    place is free for anyone again."""
    h = _full_band(make, grace=2.0)
    _refuse(h, "r", 1.0)
    h.dispatch_one(now=1.5)
    assert h.submit("fresh", 0, now=4.01).state is State.QUEUED  # 1 + 1 + 2 < 4.01
    r = h.core.reservations
    assert (r.made, r.honoured, r.lapsed, r.outstanding, len(r)) == (1, 0, 1, 0, 0)


def test_a_promise_never_overfills_the_band(make: Callable[..., Harness]) -> None:
    """A retry in its window while the band is still full is refused again (and gets a
    new promise); the band limit holds."""
    h = _full_band(make)
    _refuse(h, "r", 1.0)
    again = _refuse(h, "r", 2.0)
    assert again.reserved
    stats = h.core.statistics()
    assert stats.bands[0].queued_requests == 2
    assert h.core.reservations.honoured == 0


def test_promises_are_spread_out_beyond_the_band_places(make: Callable[..., Harness]) -> None:
    """Each promise is one more request to drain (at 2/s, x SAFETY 1.5): 0.75, 1.5,
    2.25... s, rounded up, past the band's 2 places; a full table promises nothing."""
    h = _full_band(make, limit=2)
    delays = [_refuse(h, f"r{i}", 1.0).retry_after for i in range(6)]
    assert delays == [1, 2, 3, 3, 4, 5]
    h.core.reservations.limit = 6
    refusal = _refuse(h, "late", 1.0)  # the table is full: the delay, no promise
    assert refusal.retry_after is None and not refusal.reserved
    assert refusal.retry == "table_full"
    r = h.core.reservations
    assert (r.made, r.refused, r.outstanding) == (6, 1, 6)


def test_no_delay_beyond_the_horizon(make: Callable[..., Harness]) -> None:
    """Past MAX_DELAY nothing is promised, and no delay advised."""
    h = _full_band(make, limit=1)
    for i in range(round(MAX_DELAY * 2 / SAFETY)):  # 2/s: up to 80 requests ahead
        assert _refuse(h, f"r{i}", 1.0).reserved
    beyond = _refuse(h, "beyond", 1.0)
    assert beyond.retry_after is None and not beyond.reserved
    assert beyond.retry == "horizon"  # the gateway sends no Retry-After, and says why


def test_no_outflow_no_promise(make: Callable[..., Harness]) -> None:
    """Nothing dispatched from the band in the window (starved): no promise, and no
    delay advised."""
    h = make(sg.FlowControlConfig(bands={0: sg.BandConfig(max_requests=1)}))
    h.submit("q", 0)
    refusal = _refuse(h, "r", 0.0)
    assert refusal.retry_after is None and not refusal.reserved
    assert refusal.retry == "starved"
    h2 = _full_band(make)  # dispatched from in [0, 1): an outflow until 10.0
    assert _refuse(h2, "r", 1.0 + OUTFLOW_WINDOW - 1.01).reserved
    late = _refuse(h2, "s", 1.0 + OUTFLOW_WINDOW)
    assert not late.reserved and late.retry == "starved"
    assert (h.core.reservations.made, h.core.reservations.refused) == (0, 1)


def test_reservations_can_be_turned_off(make: Callable[..., Harness]) -> None:
    """Off: nothing is promised or held back (the gateway advises its own delay)."""
    h = _full_band(make, on=False)
    refusal = _refuse(h, "r", 1.0)
    assert refusal.retry_after is None and not refusal.reserved and refusal.retry is None
    h.dispatch_one(now=1.5)
    assert h.submit("fresh", 0, now=1.6).state is State.QUEUED


def test_reconfigure_turns_promises_off(make: Callable[..., Harness]) -> None:
    """Off by `reconfigure`: the places promised are no longer held back."""
    h = _full_band(make)
    assert _refuse(h, "r", 1.0).reserved
    h.dispatch_one(now=1.5)
    h.core.reconfigure(dataclasses.replace(h.core.config, retry_reservations=False), 1.6)
    assert h.submit("fresh", 0, now=1.6).state is State.QUEUED


def test_a_flow_dispatched_on_arrival_uses_its_promise(make: Callable[..., Harness]) -> None:
    h = _full_band(make, limit=1)
    _refuse(h, "r", 1.0)
    h.dispatch_one(now=1.2)
    h.gate.saturated = False
    assert h.submit("r", 0, now=2.0).state is State.DISPATCHED
    assert h.core.reservations.honoured == 1


def test_advised_delay() -> None:
    assert advised_delay(3, None) is None
    assert advised_delay(3, 0.0) is None
    assert advised_delay(1, 10.0) == 1  # never less than a second
    assert advised_delay(3, 2.0) == 3  # 1.5 s x SAFETY 1.5, rounded up
    assert advised_delay(121, 2.0) == 91  # `promise` does not promise beyond MAX_DELAY


def test_the_table_is_bounded() -> None:
    r = Reservations(limit=3)
    assert [r.reserve(0, "a", 0.0, 1, 1.0) for _ in range(4)] == [True] * 3 + [False]
    due = r.due(0, "a", 1.0)
    assert due is not None
    r.honour(due)
    # A used entry still counts until its window closes: memory, not places.
    assert (len(r), r.outstanding) == (3, 2)
    assert not r.reserve(0, "a", 1.5, 1, 1.0)
    assert r.reserve(0, "a", 2.01, 1, 1.0)  # all three windows closed at 2.0
    assert (r.lapsed, r.outstanding, len(r)) == (2, 1, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("retry_reservations", 1), ("retry_grace", 0), ("retry_grace", float("inf"))],
)
def test_reservation_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(sg.ConfigError, match=field):
        sg.FlowControlConfig(**{field: value})  # type: ignore[arg-type]


# -- property: random arrivals, dispatches and time ----------------------------------------

_LIMIT = 3
_SUBMIT = st.tuples(st.just("submit"), st.sampled_from("abc"), st.sampled_from([-1, 0, 0, 1]))
_STEP = st.one_of(
    _SUBMIT,
    _SUBMIT,
    _SUBMIT,
    _SUBMIT,
    st.tuples(st.just("dispatch"), st.just(""), st.just(0)),
    st.tuples(st.just("release"), st.just(""), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.integers(1, 30)),
)


def _check_advice(refusal: sg.QueueFullError) -> None:
    """A delay is advised only as a promise; a refusal without one says why."""
    assert (refusal.retry_after is not None) == refusal.reserved
    assert refusal.retry in (None, "reserved", "horizon", "starved", "table_full")
    assert (refusal.retry == "reserved") == refusal.reserved


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, min_size=10, max_size=120))
def test_promises_conserve_and_bound(steps: list[tuple[str, str, int]]) -> None:
    """After every step: band limits hold (a promise never overfills a band), the
    promises are bounded by the table, made = honoured + lapsed + outstanding, requests
    conserve, displacement (a global limit is set too) only ever evicts strictly lower
    priority, and a refusal advises a delay only with a promise."""
    config = sg.FlowControlConfig(
        default_ttl=None,
        max_requests=8,
        bands={p: sg.BandConfig(max_requests=_LIMIT) for p in (-1, 0, 1)},
        retry_grace=1.0,
    )
    core = Scheduler(config)
    core.reservations.limit = 6
    gate = ManualDetector(saturated=True)
    for p in (-1, 0, 1):  # 20 left each band's queue in [0, 1): 2/s
        for i in range(20):
            core.submit(sg.FlowKey("warm", p), 0, None, None, i / 20, gate)
            gate.saturated = False
            core.dispatch(i / 20, gate)
            gate.saturated = True
    now, running = 1.0, []
    for kind, fid, value in steps:
        if kind == "submit":
            try:
                ticket = core.submit(sg.FlowKey(fid, value), 0, None, None, now, gate)
            except sg.QueueFullError as refusal:
                _check_advice(refusal)
            else:
                if ticket.state is State.DISPATCHED:
                    running.append(ticket)
                for victim in core.take_displaced():
                    assert victim.priority < value
        elif kind == "dispatch":
            gate.saturated = False
            running += core.dispatch(now, gate)
            gate.saturated = True
        elif kind == "release" and running:
            core.release(running.pop(0), now, gate)
        else:
            now += value / 10
        r = core.reservations
        assert r.made == r.honoured + r.lapsed + r.outstanding
        assert len(r) <= r.limit and r.outstanding <= len(r)
        for band in core.registry.bands.values():
            assert band.queued_requests <= _LIMIT
            assert r.held(band.priority, now) <= r.outstanding
        stats = core.statistics()
        assert stats.submitted == stats.dispatched + stats.rejected + stats.evicted + (
            stats.queued_requests
        )
