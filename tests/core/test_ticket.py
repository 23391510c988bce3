"""The public ticket: read-only but for the detector's `assignment`; internals private."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import sluicegate as sg

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conftest import Harness

#: The documented read-only surface (the `Ticket` docstring and docs/design.md).
READ_ONLY = (
    "key",
    "priority",
    "size",
    "seq",
    "arrival",
    "expires_at",
    "slo_at",
    "ttl",
    "state",
    "outcome",
    "dispatched_at",
    "queue_time",
    "eta",
    "preemptible",
    "requeues",
    "released",
    "input_tokens",
    "output_tokens",
    "sort_key",
)


def test_the_public_ticket_is_read_only_but_assignment(make: Callable[..., Harness]) -> None:
    """Every documented attribute reads; none can be written but `assignment`."""
    h = make(saturated=False)
    ticket = h.submit("a", size=40, ttl=5.0, now=1.0)
    for name in READ_ONLY:
        getattr(ticket, name)
        with pytest.raises(AttributeError):
            setattr(ticket, name, None)
    ticket.assignment = ("backend", 1)
    assert ticket.assignment == ("backend", 1)
    assert (ticket.key, ticket.size, ticket.arrival, ticket.ttl) == (sg.FlowKey("a"), 40, 1.0, 5.0)
    assert (ticket.expires_at, ticket.queue_time, ticket.input_tokens) == (6.0, 0.0, 10)


def test_core_internals_are_not_public(make: Callable[..., Harness]) -> None:
    """What only the core and its shell use has no public name."""
    ticket = make().submit()
    for name in ("waiter", "band", "flow", "handed_over", "usage_known", "no_endpoint_at"):
        assert not hasattr(ticket, name), name
    assert {n for n in dir(sg.Ticket) if not n.startswith("_")} == {
        *READ_ONLY,
        "assignment",
        "release",
        "record_usage",
    }


def test_a_ticket_knows_its_band_from_the_start(make: Callable[..., Harness]) -> None:
    """Queued or dispatched at once, a ticket names the band that serves it."""
    h = make(sg.FlowControlConfig(dynamic_bands=False))
    queued = h.submit("a", 7)  # no band 7: falls back to band 0
    assert (queued.priority, queued.key.priority, queued.state.name) == (0, 7, "QUEUED")
    assert queued.eta is None and queued.sort_key == queued.seq
    h.gate.set(saturated=False, notify=False)
    assert h.dispatch() == [queued]
    at_once = h.submit("b", 0)
    assert (at_once.priority, at_once.state.name, at_once.eta) == (0, "DISPATCHED", None)
