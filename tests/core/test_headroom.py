"""Headroom sized to demand, with literal times."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate import ConcurrencyLimit, FlowControlConfig, FlowKey
from sluicegate._core._headroom import MIN_DRAIN_SAMPLES, DemandHeadroom
from sluicegate._core._scheduler import Scheduler

if TYPE_CHECKING:
    from sluicegate._core._ticket import Ticket


def busy_pool(headroom: DemandHeadroom, *, high_rate: float, now: float) -> None:
    """Three seconds of high-band arrivals at `high_rate` and completions at 8/s."""
    t = now - 3.0
    for i in range(int(3.0 * high_rate)):
        headroom.arrived(10, t + i / high_rate)
    for i in range(24):
        headroom.completed(0, 6.0, t + i / 8)
        headroom.completed(10, 1.0, t + i / 8)
    headroom.refresh(now)


def test_no_reserve_when_no_higher_band_sends() -> None:
    headroom = DemandHeadroom()
    for i in range(30):
        headroom.arrived(0, i * 0.1)
        headroom.completed(0, 5.0, i * 0.1)
    assert headroom.reserve_for(0) == 0
    assert headroom.allows(0, free_slots=1, capacity=48)


def test_reserve_follows_demand_and_falls_to_zero_when_it_stops() -> None:
    light, heavy = DemandHeadroom(), DemandHeadroom()
    busy_pool(light, high_rate=1.0, now=10.0)
    busy_pool(heavy, high_rate=4.0, now=10.0)
    assert 1 <= light.reserve_for(0) < heavy.reserve_for(0)
    # The band itself and bands above it keep nothing back for it.
    assert heavy.reserve_for(10) == 0
    assert heavy.reserve_for(20) == 0
    # Bands further down leave at least as much.
    assert heavy.reserve_for(-1) >= heavy.reserve_for(0)
    # The high band goes quiet: one window later nothing is held back.
    heavy.completed(0, 6.0, 13.5)
    assert heavy.reserve_for(0) == 0


def test_reserve_is_bounded_by_what_the_higher_bands_can_use_and_half_the_pool() -> None:
    headroom = DemandHeadroom()
    for i in range(30):
        headroom.arrived(10, i * 0.1)  # 10/s of 0.1 s requests: about one busy slot
        headroom.completed(10, 0.1, i * 0.1)
    assert headroom.reserve_for(0) <= 5
    # Two slots in all: a lower band is never shut out completely.
    assert headroom.allows(0, free_slots=2, capacity=2)


def interactive_history(core: Scheduler, gate: ConcurrencyLimit) -> float:
    """Three seconds of short interactive requests at 4/s, none left in flight;
    returns the time."""
    now = 0.0
    for i in range(12):
        now = i * 0.25
        ticket = core.submit(FlowKey("i", 10), 0, None, None, now, gate)
        core.release(ticket, now + 0.01, gate)
    return now


def test_scheduler_keeps_the_reserve_free_for_the_higher_band() -> None:
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig())
    # A steady interactive stream (4/s), and a backlog of batch work.
    now = interactive_history(core, gate)
    batch = [core.submit(FlowKey("b", 0), 0, None, None, now, gate) for _ in range(30)]
    core.dispatch(now, gate)
    running = sum(1 for t in batch if t.dispatched_at is not None)
    reserve = core.headroom.reserve_for(0, busy_slots=running)
    assert reserve >= 1
    # Batch stopped exactly where one more would eat into the reserve.
    assert 20 - running - 1 < reserve <= 20 - running
    # An interactive request arriving now finds its slot free: dispatched on arrival
    # (the batch backlog below it does not hold it back).
    urgent = core.submit(FlowKey("i", 10), 0, None, None, now, gate)
    assert urgent.dispatched_at == now
    assert core.dispatch(now, gate) == []


def test_leaves_headroom_at_any_level_says_what_the_reserve_allows() -> None:
    # A paused request's slot loan asks this at a level that is no band (top - 1).
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig())
    now = interactive_history(core, gate)
    batch = [core.submit(FlowKey("b", 0), 0, None, None, now, gate) for _ in range(30)]
    core.dispatch(now, gate)
    assert not core.leaves_headroom(gate, 9)  # batch stopped at the reserve
    assert core.leaves_headroom(gate, 10)  # the band itself keeps nothing back
    for ticket in [t for t in batch if t.dispatched_at is not None][:5]:
        core.release(ticket, now, gate)
    assert core.leaves_headroom(gate, 9)
    assert Scheduler(FlowControlConfig(demand_headroom=False)).leaves_headroom(gate, 9)


def test_off_by_config() -> None:
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig(demand_headroom=False))
    for i in range(12):
        ticket = core.submit(FlowKey("i", 10), 0, None, None, i * 0.25, gate)
        core.release(ticket, i * 0.25 + 0.01, gate)
    batch = [core.submit(FlowKey("b", 0), 0, None, None, 3.0, gate) for _ in range(30)]
    core.dispatch(3.0, gate)
    assert sum(1 for t in batch if t.dispatched_at is not None) == 20


class ProbingGate:
    """A pool of `proven` slots that showed they run at once, then `probes` untested."""

    recheck_interval: float | None = None

    def __init__(self, proven: int, probes: int) -> None:
        self.proven, self.probes, self.in_flight = proven, probes, 0
        self.priorities: list[int] = []

    def is_saturated(self) -> bool:
        return self.in_flight >= self.proven + self.probes

    def has_endpoints(self) -> bool:
        return True

    def utilization(self) -> float:
        return self.in_flight / (self.proven + self.probes)

    def probe_only(self) -> bool:
        return self.proven <= self.in_flight < self.proven + self.probes

    def on_dispatch(self, ticket: Ticket, /) -> None:
        self.in_flight += 1
        self.priorities.append(ticket.priority)

    def on_release(self, ticket: Ticket, /) -> None:
        self.in_flight -= 1

    def set_listener(self, listener: object, /) -> None:
        pass


def test_untested_slots_go_to_a_lower_band_while_one_waits() -> None:
    gate = ProbingGate(proven=2, probes=2)
    core = Scheduler(FlowControlConfig(demand_headroom=False))
    gate.in_flight = 4  # full: everything below waits
    held = [core.submit(FlowKey("b", 0), 0, None, None, 0.0, gate) for _ in range(3)]
    urgent = core.submit(FlowKey("i", 10), 0, None, None, 0.0, gate)
    gate.in_flight = 2  # the proven slots are taken, the two probes free
    core.dispatch(0.0, gate)
    # The probes went to batch work; the interactive request waits for a proven slot.
    assert gate.priorities == [0, 0]
    assert urgent.dispatched_at is None
    assert sum(1 for t in held if t.dispatched_at is not None) == 2
    # Nor does an interactive request take one on arrival, with nothing above it queued.
    gate = ProbingGate(proven=2, probes=2)
    core = Scheduler(FlowControlConfig(demand_headroom=False))
    gate.in_flight = 4
    core.submit(FlowKey("b", 0), 0, None, None, 0.0, gate)
    gate.in_flight = 2
    arriving = core.submit(FlowKey("i", 10), 0, None, None, 0.0, gate)
    assert arriving.dispatched_at is None
    core.dispatch(0.0, gate)
    assert gate.priorities == [0]
    # With nothing lower waiting, a probe is the interactive request's to take.
    lone = Scheduler(FlowControlConfig(demand_headroom=False))
    gate = ProbingGate(proven=0, probes=1)
    assert lone.submit(FlowKey("i", 10), 0, None, None, 0.0, gate).dispatched_at == 0.0


class HeadroomProbingGate(ProbingGate):
    """`ProbingGate` with the slot counts demand headroom reads."""

    def slots(self) -> tuple[float, float]:
        total = self.proven + self.probes
        return float(total - self.in_flight), float(total)

    def probe_for(self, priority: int) -> bool:
        return priority < 10 and self.probe_only()


def test_a_probe_left_by_the_top_band_is_not_held_back_as_headroom() -> None:
    gate = HeadroomProbingGate(proven=8, probes=2)
    core = Scheduler(FlowControlConfig())
    busy_pool(core.headroom, high_rate=4.0, now=10.0)
    assert core.headroom.reserve_for(0, busy_slots=8) >= 2  # more than the probes
    gate.in_flight = 10
    batch = [core.submit(FlowKey("b", 0), 0, None, None, 10.0, gate) for _ in range(3)]
    core.submit(FlowKey("i", 10), 0, None, None, 10.0, gate)
    gate.in_flight = 8  # the proven slots are full, both probes free
    core.dispatch(10.0, gate)
    # The interactive request leaves the probes to batch work, and the reserve for it
    # does not keep them idle: otherwise neither band would ever test them.
    assert sum(1 for t in batch if t.dispatched_at is not None) == 2


def steady_interactive(core: Scheduler, gate: ConcurrencyLimit) -> float:
    """Three seconds of interactive arrivals (4/s, 1 s each, the last ones still in
    flight) over a pool with no other work; returns the time."""
    held: list[Ticket] = []
    now = 0.0
    for i in range(13):
        now = i * 0.25
        while held and held[0].arrival + 1.0 <= now:
            core.release(held.pop(0), now, gate)
        held.append(core.submit(FlowKey("i", 10), 0, None, None, now, gate))
    return now


def test_preemptible_work_fills_the_top_bands_reserve_but_its_idle_part() -> None:
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig())
    now = steady_interactive(core, gate)
    plain = [core.submit(FlowKey("b", 0), 0, None, None, now, gate) for _ in range(30)]
    core.dispatch(now, gate)
    free = int(gate.slots()[0])
    assert free >= core.headroom.reserve_for(0, busy_slots=20 - free) >= 2
    # Preemptible work of a lower band goes on into the reserve (the blocked plain
    # work above does not hold it back), down to the idle part kept for arrivals.
    paused = [
        core.submit(FlowKey("p", -1), 0, None, None, now, gate, preemptible=True) for _ in range(30)
    ]
    core.dispatch(now, gate)
    taken = [t for t in paused if t.dispatched_at is not None]
    idle = core.headroom.reserve_for(0, busy_slots=20 - free, miss=core.headroom.idle_miss)
    assert 1 <= idle < free
    assert len(taken) == free - idle
    assert core.preemptible_in_flight == len(taken)
    assert all(t.preemptible for t in taken)
    # Slots change hands: plain work counts the preemptible slots as the top band's,
    # so the reserve stays covered (idle or reclaimable), and its idle part idle.
    for victim in (*taken, *plain):
        if victim.dispatched_at is None or victim.state.name != "DISPATCHED":
            continue
        core.release(victim, now, gate)
        core.dispatch(now, gate)
        free = int(gate.slots()[0])
        reserve = core.headroom.reserve_for(0, busy_slots=20 - free)
        assert free + core.preemptible_in_flight >= reserve
        assert free >= core.headroom.reserve_for(0, 20 - free, core.headroom.idle_miss)
    # The top band arrives: it is dispatched at once into an idle slot.
    urgent = core.submit(FlowKey("i", 10), 0, None, None, now, gate)
    assert urgent.dispatched_at == now


def test_a_requeued_ticket_stops_counting_as_preemptible() -> None:
    gate = ConcurrencyLimit(4)
    core = Scheduler(FlowControlConfig())
    ticket = core.submit(FlowKey("p", -1), 0, None, None, 0.0, gate, preemptible=True)
    assert ticket.preemptible and core.preemptible_in_flight == 1
    ticket._preemptible = False  # what `requeue_and_wait(preemptible=False)` does
    assert core.requeue(ticket, 1.0, gate)
    assert core.preemptible_in_flight == 0 and core.preemptible_queued == 0
    core.dispatch(1.0, gate)
    assert ticket.dispatched_at == 1.0
    assert core.preemptible_in_flight == 0
    core.release(ticket, 2.0, gate)
    assert core.preemptible_in_flight == 0 and core.in_flight == 0


def test_preemptible_work_keeps_a_slot_for_a_middle_band_without_backlog() -> None:
    headroom = DemandHeadroom()
    busy_pool(headroom, high_rate=4.0, now=10.0)
    for i in range(30):  # a middle band (priority 5) sends too, with no backlog
        headroom.arrived(5, 7.0 + i * 0.1)
    headroom.refresh(10.0)
    idle = headroom.reserve_for(9, busy_slots=40, miss=headroom.idle_miss)
    assert headroom.allows_preemptible(0, 10, idle + 1, 48, middle=False)
    assert not headroom.allows_preemptible(0, 10, idle + 1, 48, middle=True)
    assert headroom.allows_preemptible(0, 10, idle + 2, 48, middle=True)


def test_a_lent_slot_is_not_counted_as_reclaimable() -> None:
    """A paused request that lent its slot (slot loans) holds nothing the top band
    could take back by pausing it; it counts again once its home gives one back."""
    gate = ConcurrencyLimit(4)
    core = Scheduler(FlowControlConfig())
    ticket = core.submit(FlowKey("p", -1), 0, None, None, 0.0, gate, preemptible=True)
    assert core.preemptible_in_flight == 1
    core.holds_slot(ticket, False)
    core.holds_slot(ticket, False)  # idempotent
    assert core.preemptible_in_flight == 0 and core.in_flight == 1
    core.holds_slot(ticket, True)
    core.holds_slot(ticket, True)
    assert core.preemptible_in_flight == 1
    core.holds_slot(ticket, False)
    core.release(ticket, 1.0, gate)  # released while lent: nothing counted twice
    assert core.preemptible_in_flight == 0 and core.in_flight == 0
    core.holds_slot(ticket, True)  # no longer dispatched: ignored
    assert core.preemptible_in_flight == 0


def test_a_preemptible_taker_may_use_the_reserve_down_to_its_idle_part() -> None:
    """`leaves_headroom(..., preemptible=True)` (a slot loan going back to a paused
    request) applies the dispatch rule of pausable work, not the plain one."""
    gate = ConcurrencyLimit(20)
    core = Scheduler(FlowControlConfig())
    now = steady_interactive(core, gate)
    for _ in range(30):
        core.submit(FlowKey("b", 0), 0, None, None, now, gate)
    core.dispatch(now, gate)
    free = int(gate.slots()[0])
    idle = core.headroom.reserve_for(0, busy_slots=20 - free, miss=core.headroom.idle_miss)
    assert free > idle >= 1
    assert not core.leaves_headroom(gate, -1)  # plain work stops at the reserve
    assert core.leaves_headroom(gate, -1, preemptible=True)
    assert core.leaves_headroom(gate, 10, preemptible=True)  # the top band itself


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from([-1, 0, 10]),
            st.floats(min_value=0.0, max_value=2.0),
        ),
        max_size=60,
    )
)
def test_rates_are_what_the_window_holds_after_every_event(
    events: list[tuple[bool, int, float]],
) -> None:
    """The incremental bookkeeping (a refresh walks the bands only when something may
    have left the window) agrees with counting the window afresh."""
    headroom = DemandHeadroom()
    now = 0.0
    arrivals: list[tuple[float, int]] = []
    completions: list[float] = []
    for is_arrival, priority, gap in events:
        now += gap
        if is_arrival:
            headroom.arrived(priority, now)
            arrivals.append((now, priority))
        else:
            headroom.completed(priority, 1.0, now)
            completions.append(now)
        horizon = now - headroom.window
        for band in (-1, 0, 10):
            held = sum(1 for t, p in arrivals if p == band and t >= horizon)
            assert headroom.rate(band) == held / headroom.window
        held = sum(1 for t in completions if t >= horizon)
        drain = held / headroom.window if held >= MIN_DRAIN_SAMPLES else None
        assert headroom.drain_rate(0.0) == drain
