"""Slot loans (`_affinity.py`): a paused request gets the next slot its own backend frees,
unless the top band waits for it; else it queues again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from sluicegate.gateway import ConcurrencySettings
from sluicegate.gateway._affinity import SlotLoans
from sluicegate.gateway._preempt import LOAN_WAIT_S, Preemption
from sluicegate.gateway._saturation import ConcurrencyDetector, binding_of

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


class _Paused:
    paused = True
    home = None

    def resumed(self) -> None:
        pass


class _Ticket:
    def __init__(self, ttl: float = 0.0) -> None:
        self.assignment: Any = None
        self.priority = -1
        self.ttl = ttl


def _setup(top_waits: list[bool]) -> tuple[ConcurrencyDetector, SlotLoans, list[bool]]:
    settings = ConcurrencySettings(type="concurrency", max_in_flight=2)
    detector = ConcurrencyDetector(["http://a", "http://b"], settings, lambda: 0.0)
    told: list[bool] = []
    detector.set_listener(lambda: told.append(True))
    loans = SlotLoans(detector, lambda backend, ticket: not top_waits[0])
    detector.on_freed = loans.freed
    return detector, loans, told


def _bind(detector: ConcurrencyDetector, url: str) -> Any:
    ticket: Any = _Ticket()
    ticket.assignment = detector.backends[url].bind()
    return ticket


async def test_a_lent_slot_comes_back_from_its_home_backend_only() -> None:
    detector, loans, told = _setup([False])
    a, b = detector.backends.values()
    paused, other_a, other_b = _bind(detector, "http://a"), _bind(detector, "http://a"), None
    other_b = _bind(detector, "http://b")
    future = loans.lend(paused)
    assert future is not None and told  # the controller hears of the free slot
    assert paused.assignment is None and a.in_flight == 1
    detector.on_release(other_b)  # another backend's slot: not its cache
    assert not future.done() and b.in_flight == 0
    detector.on_release(other_a)
    assert future.result() is True
    binding = binding_of(paused)
    assert binding is not None and binding.backend is a and a.in_flight == 1
    detector.on_release(paused)
    assert (a.in_flight, b.in_flight) == (0, 0)
    assert loans.describe() == {"lent": 0, "returned": 1, "fell_back": 0}


async def test_the_top_band_waiting_gets_the_freed_slot_first() -> None:
    top_waits = [True]
    detector, loans, _ = _setup(top_waits)
    a = detector.backends["http://a"]
    paused, running = _bind(detector, "http://a"), _bind(detector, "http://a")
    future = loans.lend(paused)
    assert future is not None
    detector.on_release(running)  # the top band waits: it takes this slot
    assert not future.done() and a.in_flight == 0
    running = _bind(detector, "http://a")  # ... and is dispatched there
    top_waits[0] = False
    detector.on_release(running)
    assert future.result() is True and a.in_flight == 1


async def test_a_loan_queues_again_when_its_home_is_out_of_service() -> None:
    detector, loans, _ = _setup([False])
    a = detector.backends["http://a"]
    paused, other = _bind(detector, "http://a"), _bind(detector, "http://a")
    future = loans.lend(paused)
    assert future is not None
    a.healthy = False
    detector.on_release(other)
    assert future.result() is False and paused.assignment is None
    assert a.in_flight == 0 and loans.fell_back == 1
    assert loans.lend(_bind(detector, "http://a")) is None  # out of service: no loan


async def test_a_withdrawn_loan_is_never_given_a_slot() -> None:
    detector, loans, _ = _setup([False])
    a = detector.backends["http://a"]
    paused, other = _bind(detector, "http://a"), _bind(detector, "http://a")
    future = loans.lend(paused)
    assert future is not None
    loans.withdraw(future)  # its client left
    detector.on_release(other)
    assert paused.assignment is None and a.in_flight == 0


@pytest.mark.parametrize(("ttl", "waited"), [(0.0, LOAN_WAIT_S), (0.2, 0.2)])
async def test_a_paused_request_waits_for_its_home_at_most_its_ttl(
    ttl: float, waited: float
) -> None:
    detector, loans, _ = _setup([False])
    requeued: list[float] = []
    loop = asyncio.get_running_loop()

    async def requeue_and_wait(ticket: Any) -> Any:
        requeued.append(loop.time())
        return ticket

    controller: Any = SimpleNamespace(requeue_and_wait=requeue_and_wait)
    preemption = Preemption(controller, loans=loans)
    ticket: Any = _Ticket(ttl)
    ticket.assignment = detector.backends["http://a"].bind()
    _bind(detector, "http://a")  # runs on, never ends
    resumable: Any = _Paused()
    began = loop.time()
    ex: Any = SimpleNamespace()
    assert await preemption.wait_again(ticket, ex, resumable) is ticket
    assert requeued == [pytest.approx(began + waited)]
    assert preemption.describe()["loans"]["lent"] == 0


async def test_a_loan_on_a_removed_backend_queues_again() -> None:
    detector, loans, _ = _setup([False])
    paused, other = _bind(detector, "http://a"), _bind(detector, "http://a")
    future = loans.lend(paused)
    assert future is not None
    detector.set_backends(["http://b"])  # a is removed; its requests finish there
    detector.on_release(other)
    assert future.result() is False and paused.assignment is None
    assert loans.fell_back == 1


def _pool(demand_headroom: bool) -> Any:
    from sluicegate.gateway import parse_config
    from sluicegate.gateway._pool import Pool

    config = parse_config(
        {
            "pools": [
                {
                    "name": "p",
                    "backends": ["http://a"],
                    "saturation": {"type": "concurrency", "max_in_flight": 4},
                }
            ],
            "flow_control": {"demand_headroom": demand_headroom},
            "objectives": [{"name": "hi", "priority": 10}, {"name": "lo", "priority": -1}],
        }
    )
    return Pool(config.pools[0], config.flow_control, lambda: 0.0)


async def test_the_pool_gives_a_slot_back_only_when_the_top_band_loses_nothing() -> None:
    pool = _pool(demand_headroom=True)
    backend = pool.detector.backends["http://a"]
    assert pool.preemption.loans is not None
    assert pool.detector.on_freed == pool.preemption.loans.freed
    loan = SimpleNamespace(priority=-1, preemptible=True)  # a paused batch request
    assert pool._may_take_back(backend, loan)  # no band seen yet
    pool.preemption.top_priority = 10
    queued = [0]
    headroom = [True]
    pool.controller = SimpleNamespace(
        queued_requests=lambda priority: queued[0] if priority == 10 else 5,
        leaves_headroom=lambda priority, preemptible: (
            priority == -1 and preemptible and headroom[0]
        ),
    )
    assert pool._may_take_back(backend, loan)  # lower bands queued: the loan goes first
    queued[0] = 1
    assert not pool._may_take_back(backend, loan)  # the top band waits: it takes the slot
    queued[0] = 0
    headroom[0] = False
    assert not pool._may_take_back(backend, loan)  # the slot is kept free for the top band
