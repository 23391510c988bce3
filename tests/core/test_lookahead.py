"""Admission that looks ahead: displacement and deadline-aware early rejection, in
literal time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import sluicegate as sg
from sluicegate._core._ticket import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


# -- displacement ------------------------------------------------------------------------


def test_full_queue_makes_room_for_higher_priority(make: Callable[..., Harness]) -> None:
    """Capacity full of priority -1: a priority 10 arrival displaces the newest of them."""
    h = make(sg.FlowControlConfig(max_requests=2))
    old = h.submit("batch", -1)
    new = h.submit("batch", -1)
    vip = h.submit("vip", 10)
    assert vip.state is State.QUEUED
    assert new.outcome is sg.Outcome.EVICTED_DISPLACED and new.state is State.FINISHED
    assert old.state is State.QUEUED
    assert h.core.take_displaced() == [new]
    assert h.core.take_displaced() == []
    stats = h.core.statistics()
    assert stats.queued_requests == 2
    assert stats.outcomes[sg.Outcome.EVICTED_DISPLACED] == 1
    assert stats.submitted == stats.evicted + stats.queued_requests


def test_lowest_band_goes_first(make: Callable[..., Harness]) -> None:
    """The victim is the lowest band's, even when a higher band holds newer work."""
    h = make(sg.FlowControlConfig(max_requests=3))
    lowest = h.submit("a", -5)
    middle = [h.submit("b", 0), h.submit("b", 0)]
    h.submit("c", 3)
    assert lowest.outcome is sg.Outcome.EVICTED_DISPLACED
    assert all(t.state is State.QUEUED for t in middle)


def test_equal_priority_is_never_displaced(make: Callable[..., Harness]) -> None:
    """Only strictly lower priority makes room: a peer arrival is refused as before."""
    h = make(sg.FlowControlConfig(max_requests=2))
    a, b = h.submit("a", 1), h.submit("b", 1)
    with pytest.raises(sg.QueueFullError, match="max_requests=2"):
        h.submit("c", 1)
    assert a.state is b.state is State.QUEUED
    assert h.core.statistics().outcomes[sg.Outcome.EVICTED_DISPLACED] == 0


def test_band_limit_is_never_met_by_displacement(make: Callable[..., Harness]) -> None:
    """A band holds only its own priority, so a full band refuses even over lower work."""
    h = make(sg.FlowControlConfig(bands={5: sg.BandConfig(max_requests=1)}))
    low = h.submit("low", 0)
    h.submit("a", 5)
    with pytest.raises(sg.QueueFullError, match="band 5 holds its max_requests=1"):
        h.submit("b", 5)
    assert low.state is State.QUEUED


def test_bytes_displace_as_many_as_needed_or_none(make: Callable[..., Harness]) -> None:
    """A byte limit evicts several small requests, newest first; when even all of the
    lower ones would not make room, nothing is evicted and the arrival is refused."""
    h = make(sg.FlowControlConfig(max_bytes=100))
    small = [h.submit("s", 0, size=20) for _ in range(5)]
    h.submit("big", 3, size=50)
    assert [t.state for t in small] == [State.QUEUED] * 2 + [State.FINISHED] * 3
    with pytest.raises(sg.QueueFullError, match="max_bytes=100"):
        h.submit("huge", 1, size=91)  # only the two small ones (40 bytes) are below it
    assert [t.state for t in small[:2]] == [State.QUEUED] * 2
    assert h.core.statistics().queued_bytes == 90


def test_displacement_can_be_turned_off(make: Callable[..., Harness]) -> None:
    h = make(sg.FlowControlConfig(max_requests=1, displacement=False))
    low = h.submit("low", -1)
    with pytest.raises(sg.QueueFullError):
        h.submit("high", 1)
    assert low.state is State.QUEUED


# -- early rejection -----------------------------------------------------------------------


def _learn_drain(h: Harness, completions: int = 10, until: float = 1.0) -> None:
    """`completions` requests finished within [0, until): 10 in a 3 s window = 3.33/s."""
    h.gate.saturated = False
    for i in range(completions):
        at = until * i / completions
        h.release(h.submit("warm", 0, now=at), now=at)
    h.gate.saturated = True


def test_no_estimate_no_early_rejection(make: Callable[..., Harness]) -> None:
    """Before the pool has finished anything, even a hopeless deadline is queued."""
    h = make()
    for _ in range(100):
        h.submit()
    assert h.submit(ttl=0.001).state is State.QUEUED


def test_hopeless_ttl_is_rejected_at_once(make: Callable[..., Harness]) -> None:
    """9 queued ahead at 3.33/s: position 10 waits about 3 s; a 1 s TTL is refused."""
    h = make()
    _learn_drain(h)
    for _ in range(9):
        h.submit("q", 0, now=1.0)
    with pytest.raises(sg.DeadlineUnreachableError, match="position 10") as caught:
        h.submit("late", 0, ttl=1.0, now=1.0)
    assert caught.value.position == 10
    assert caught.value.wait_s == pytest.approx(3.0)
    assert caught.value.status_hint == 429
    stats = h.core.statistics()
    assert stats.outcomes[sg.Outcome.REJECTED_DEADLINE] == 1
    assert sg.FlowKey("late", 0) not in stats.flows  # a rejection leaves no state


def test_margin_admits_what_is_close(make: Callable[..., Harness]) -> None:
    """A 3 s wait for a 2.5 s TTL is within the 25 % margin: admitted."""
    h = make()
    _learn_drain(h)
    for _ in range(9):
        h.submit("q", 0, now=1.0)
    assert h.submit("close", 0, ttl=2.5, now=1.0).state is State.QUEUED
    strict = make(sg.FlowControlConfig(early_reject_margin=0.0))
    _learn_drain(strict)
    for _ in range(9):
        strict.submit("q", 0, now=1.0)
    with pytest.raises(sg.DeadlineUnreachableError):
        strict.submit("close", 0, ttl=2.5, now=1.0)


def test_slo_is_the_deadline_when_given(make: Callable[..., Harness]) -> None:
    """A long TTL with a 1 s SLO: the SLO decides."""
    h = make()
    _learn_drain(h)
    for _ in range(9):
        h.submit("q", 0, now=1.0)
    with pytest.raises(sg.DeadlineUnreachableError, match="SLO"):
        h.submit("slo", 0, ttl=60.0, slo=1.0, now=1.0)


def test_only_work_ahead_counts(make: Callable[..., Harness]) -> None:
    """Work queued below does not delay a higher band: it is next."""
    h = make()
    _learn_drain(h)
    for _ in range(9):
        h.submit("q", 0, now=1.0)
    assert h.submit("vip", 5, ttl=1.0, now=1.0).state is State.QUEUED
    # The next one at priority 5 has only "vip" ahead of it.
    wait, position = h.core.estimate_wait(5)
    assert wait == pytest.approx(0.6) and position == 2


def test_top_band_counts_slots_it_takes_back_as_no_wait(make: Callable[..., Harness]) -> None:
    """Preemptible work of a lower band in flight gives its slot back at once for the top
    band (the gateway pauses it): those positions wait for no completion, so a tight SLO
    there is not refused; beyond them the drain rate counts, for the bands below too."""
    h = make()
    _learn_drain(h)  # 3.33 completions/s, then saturated
    h.gate.saturated = False
    for _ in range(2):
        h.core.submit(sg.FlowKey("p", -1), 0, None, None, 1.0, h.gate, preemptible=True)
    h.core.submit(sg.FlowKey("own", 5), 0, None, None, 1.0, h.gate, preemptible=True)
    h.gate.saturated = True
    assert h.core.preemptible_in_flight == 3
    # Two slots of band -1 to take back (band 5's own preemptible work does not count).
    assert h.core.estimate_wait(5) == (0.0, 1)
    assert h.submit("vip", 5, slo=0.01, now=1.0).state is State.QUEUED
    assert h.submit("vip", 5, slo=0.01, now=1.0).state is State.QUEUED
    wait, position = h.core.estimate_wait(5)
    assert position == 3 and wait == pytest.approx(0.3)  # one completion at 3.33/s
    with pytest.raises(sg.DeadlineUnreachableError):
        h.submit("vip", 5, slo=0.01, now=1.0)
    # Below the top band, the two top-band requests the lent slots take cost nothing.
    wait, position = h.core.estimate_wait(0)
    assert position == 3 and wait == pytest.approx(0.3)


def test_early_rejection_can_be_turned_off(make: Callable[..., Harness]) -> None:
    h = make(sg.FlowControlConfig(early_reject=False))
    _learn_drain(h)
    for _ in range(9):
        h.submit("q", 0, now=1.0)
    assert h.submit("late", 0, ttl=1.0, now=1.0).state is State.QUEUED


def test_early_rejection_never_displaces(make: Callable[..., Harness]) -> None:
    """A request refused for its deadline evicts nobody, even at a full global limit."""
    h = make(sg.FlowControlConfig(max_requests=9))
    _learn_drain(h)
    low = [h.submit("low", -1, now=1.0) for _ in range(9)]
    for _ in range(8):
        h.submit("q", 0, now=1.0)  # displaces 8 of the low ones
    with pytest.raises(sg.DeadlineUnreachableError):
        h.submit("late", 0, ttl=1.0, now=1.0)
    assert sum(t.state is State.QUEUED for t in low) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("displacement", 1), ("early_reject", "yes"), ("early_reject_margin", -0.1)],
)
def test_lookahead_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(sg.ConfigError, match=field):
        sg.FlowControlConfig(**{field: value})  # type: ignore[arg-type]
