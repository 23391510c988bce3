"""Queue conformance (every entry of QUEUES) and the ordering/fairness policies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

import sluicegate as sg
from sluicegate._core._ticket import State, Ticket

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness


#: A stand-in for the flow a ticket belongs to (a queue never looks at it).
_FLOW: Any = SimpleNamespace(band=SimpleNamespace(priority=0))


def _ticket(seq: int, key: object | None = None) -> Ticket:
    """A queued ticket with this sort key, as the scheduler would queue it."""
    t = Ticket(sg.FlowKey("a", 0), _FLOW, 1, float(seq), seq, expires_at=None, slo_at=None)
    t._sort_key = seq if key is None else key
    t._state = State.QUEUED
    return t


@pytest.fixture(params=sorted(sg.QUEUES))
def queue(request: pytest.FixtureRequest) -> sg.Queue:
    factory: Callable[[], sg.Queue] = sg.QUEUES[request.param]
    return factory()


def test_queue_starts_empty(queue: sg.Queue) -> None:
    """A new queue has no head and nothing to drain."""
    assert len(queue) == 0
    assert queue.peek() is None
    assert queue.drain() == []
    assert queue.live() == []


def test_queue_serves_in_key_order(queue: sg.Queue) -> None:
    """With sort keys equal to arrival order, every queue is FIFO."""
    tickets = [_ticket(i) for i in range(5)]
    assert queue.push(tickets[0]) is True
    assert [queue.push(t) for t in tickets[1:]] == [False] * 4
    out = []
    while len(queue):
        t = queue.pop()
        t._state = State.DISPATCHED
        out.append(t)
    assert out == tickets


def test_queue_discard_reports_head_changes(queue: sg.Queue) -> None:
    """Discarding the head changes the head; discarding a middle ticket does not."""
    a, b, c = (_ticket(i) for i in range(3))
    for t in (a, b, c):
        queue.push(t)
    assert queue.discard(b) is False
    b._state = State.FINISHED
    assert len(queue) == 2
    assert queue.discard(a) is True
    a._state = State.FINISHED
    assert queue.peek() is c
    assert queue.live() == [c]


def test_queue_compacts_after_mass_discard(queue: sg.Queue) -> None:
    """Lazily removed tickets do not pile up: the container compacts itself."""
    tickets = [_ticket(i) for i in range(1000)]
    for t in tickets:
        queue.push(t)
    for t in tickets[1:]:
        queue.discard(t)
        t._state = State.FINISHED
    assert len(queue) == 1
    assert queue.peek() is tickets[0]
    assert queue.drain() == [tickets[0]]
    assert len(queue) == 0


def test_heap_queue_orders_by_sort_key() -> None:
    """The heap queue's head is the smallest key, whatever the insertion order."""
    q = sg.HeapQueue()
    late, early = _ticket(1, (9.0, 1)), _ticket(2, (3.0, 2))
    assert q.push(late) is True
    assert q.push(early) is True
    assert q.peek() is early
    assert q.drain() == [early, late]


def test_global_strict_breaks_ties_by_arrival(make: Callable[..., Harness]) -> None:
    """Regression (upstream bug 7): equal arrival times are served in submission order.

    All requests arrive at the same instant in three flows; the order must follow
    submission exactly, every time.
    """
    h = make()
    order = [("c", 0), ("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    for fid, _ in order:
        h.submit(fid, now=5.0)
    h.gate.set(saturated=False, notify=False)
    assert [t.key.id for t in h.dispatch(now=5.0)] == [fid for fid, _ in order]


def test_round_robin_gives_one_turn_per_backlogged_flow(make: Callable[..., Harness]) -> None:
    """A flow with many requests cannot starve flows with few."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(fairness="round-robin")))
    for _ in range(4):
        h.submit("heavy")
    h.submit("light1")
    h.submit("light2")
    h.gate.set(saturated=False, notify=False)
    ids = [t.key.id for t in h.dispatch()]
    assert ids == ["heavy", "light1", "light2", "heavy", "heavy", "heavy"]


def test_round_robin_skips_a_flow_emptied_by_eviction(make: Callable[..., Harness]) -> None:
    """A flow whose only request was cancelled loses its turn without stalling."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(fairness="round-robin")))
    a = h.submit("a")
    h.submit("b")
    h.core.cancel(a, now=0.0)
    h.gate.set(saturated=False, notify=False)
    assert [t.key.id for t in h.dispatch()] == ["b"]


def test_edf_serves_earliest_deadline_first(make: Callable[..., Harness]) -> None:
    """EDF orders by arrival + TTL; requests without a TTL come last."""
    h = make(sg.FlowControlConfig(default_ttl=None, default_band=sg.BandConfig(ordering="edf")))
    forever = h.submit("a", now=0.0)
    slow = h.submit("a", ttl=50.0, now=1.0)
    urgent = h.submit("a", ttl=5.0, now=2.0)
    other_flow = h.submit("b", ttl=20.0, now=3.0)
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch(now=4.0) == [urgent, other_flow, slow, forever]


def test_slo_deadline_serves_tightest_target_first(make: Callable[..., Harness]) -> None:
    """slo-deadline orders by arrival + the request's target; none comes last."""
    h = make(sg.FlowControlConfig(default_band=sg.BandConfig(ordering="slo-deadline")))
    none = h.submit("a", now=0.0)
    relaxed = h.submit("a", slo=10.0, now=0.0)
    tight = h.submit("a", slo=0.5, now=1.0)
    tie = h.submit("a", slo=0.5, now=1.0)
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch(now=2.0) == [tight, tie, relaxed, none]
