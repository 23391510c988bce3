"""Preemptive requeue in the core: a dispatched ticket goes back to the head of its flow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate import BandConfig, ConcurrencyLimit, FlowControlConfig, FlowKey, Outcome
from sluicegate._core._scheduler import Scheduler
from sluicegate._core._ticket import State, Ticket


def test_requeued_ticket_is_next_in_its_flow_and_counters_add_up() -> None:
    gate = ConcurrencyLimit(1)
    core = Scheduler(FlowControlConfig(demand_headroom=False))
    first = core.submit(FlowKey("a", 0), 10, None, None, 0.0, gate)
    second = core.submit(FlowKey("a", 0), 10, None, None, 0.1, gate)
    assert first.state is State.DISPATCHED and second.state is State.QUEUED
    charged = core.registry.bands[0].flows["a"].output_tokens
    assert core.requeue(first, 0.2, gate)
    assert first.requeues == 1 and core.requeued == 1
    assert gate.in_flight == 0 and core.in_flight == 0 and core.queued_requests == 2
    assert core.registry.bands[0].flows["a"].output_tokens == charged - first.output_tokens
    assert core.outcomes[Outcome.DISPATCHED] == 0
    assert core.dispatch(0.3, gate) == [first]  # ahead of the later arrival
    assert not core.requeue(second, 0.3, gate)  # queued, not in flight: nothing changes
    assert core.release(first, 0.4, gate)
    assert not core.requeue(first, 0.5, gate)  # released: never requeued


def test_a_heap_queue_puts_it_back_by_its_ordering() -> None:
    gate = ConcurrencyLimit(1)
    band = BandConfig(ordering="edf")
    core = Scheduler(FlowControlConfig(default_band=band, demand_headroom=False))
    first = core.submit(FlowKey("a", 0), 0, 5.0, None, 0.0, gate)
    later = core.submit(FlowKey("a", 0), 0, 50.0, None, 0.1, gate)
    assert core.requeue(first, 0.2, gate)
    assert core.dispatch(0.3, gate) == [first]
    assert later.state is State.QUEUED


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, int]]:
    ops = st.sampled_from(["submit", "dispatch", "release", "requeue", "start"])
    return draw(st.lists(st.tuples(ops, st.integers(0, 30)), max_size=80))


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=st.integers(1, 4))
def test_requeue_never_loses_duplicates_or_requeues_a_started_request(
    script: list[tuple[str, int]], limit: int
) -> None:
    gate = ConcurrencyLimit(limit)
    core = Scheduler(FlowControlConfig())
    tickets: list[Ticket] = []
    started: set[int] = set()  # tickets whose answer began: the gateway never requeues them
    dispatches: dict[int, int] = {}
    now = 0.0
    for op, arg in script:
        now += 0.01
        if op == "submit":
            key = FlowKey(f"t{arg % 3}", (arg % 3) - 1)
            t = core.submit(key, 1, None, None, now, gate)
            tickets.append(t)
            if t.state is State.DISPATCHED:
                dispatches[id(t)] = dispatches.get(id(t), 0) + 1
        elif op == "dispatch":
            for t in core.dispatch(now, gate):
                dispatches[id(t)] = dispatches.get(id(t), 0) + 1
        elif tickets:
            t = tickets[arg % len(tickets)]
            if op == "release" and core.release(t, now, gate):
                started.discard(id(t))
            elif op == "start" and t.state is State.DISPATCHED:
                started.add(id(t))
            elif op == "requeue" and id(t) not in started:
                was = t.state
                assert core.requeue(t, now, gate) == (was is State.DISPATCHED)
        check_invariants(core, gate, tickets)
    # Drain: everything ends released exactly once, nothing left behind.
    for _ in range(len(tickets) + 1):
        for t in core.dispatch(now, gate):
            dispatches[id(t)] = dispatches.get(id(t), 0) + 1
        for t in tickets:
            core.release(t, now, gate)
    assert all(t.state is State.RELEASED for t in tickets)
    assert core.queued_requests == 0 and core.in_flight == 0 and gate.in_flight == 0
    assert core.outcomes[Outcome.DISPATCHED] == len(tickets)
    assert sum(dispatches.values()) == len(tickets) + sum(t.requeues for t in tickets)


def check_invariants(core: Scheduler, gate: ConcurrencyLimit, tickets: list[Ticket]) -> None:
    queued = [t for t in tickets if t.state is State.QUEUED]
    flying = [t for t in tickets if t.state is State.DISPATCHED]
    assert core.queued_requests == len(queued)
    assert core.in_flight == len(flying) == gate.in_flight
    live = [
        t for b in core.registry.bands.values() for f in b.flows.values() for t in f.queue.live()
    ]
    assert sorted(map(id, live)) == sorted(map(id, queued))  # each queued ticket once
    rejected_or_evicted = sum(n for o, n in core.outcomes.items() if o is not Outcome.DISPATCHED)
    assert core.submitted == core.outcomes[Outcome.DISPATCHED] + rejected_or_evicted + len(queued)
