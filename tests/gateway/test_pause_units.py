"""Units of the pause wiring: a resumed request goes back to its backend when it can."""

from __future__ import annotations

from typing import Any

from sluicegate.gateway import ConcurrencySettings
from sluicegate.gateway._saturation import ConcurrencyDetector


class _Ticket:
    assignment: Any = None


def test_move_to_sends_a_resumed_request_home_only_when_home_has_room() -> None:
    settings = ConcurrencySettings(type="concurrency", max_in_flight=1)
    detector = ConcurrencyDetector(["http://a", "http://b"], settings, lambda: 0.0)
    told: list[bool] = []
    detector.set_listener(lambda: told.append(True))
    a, b = detector.backends.values()
    other: Any = _Ticket()
    assert not detector.is_saturated()
    detector.on_dispatch(other)  # a is full now
    resumed: Any = _Ticket()
    assert not detector.is_saturated()
    detector.on_dispatch(resumed)
    assert resumed.assignment.backend is b
    assert not detector.move_to(resumed, "http://a")  # home is full: it stays
    assert not detector.move_to(resumed, "http://b")  # already home
    assert not detector.move_to(resumed, "http://gone")
    detector.on_release(other)
    assert detector.move_to(resumed, "http://a")
    assert (a.in_flight, b.in_flight) == (1, 0)
    assert told  # the slot it left on b is news for the controller
    detector.on_release(resumed)
    assert (a.in_flight, b.in_flight) == (0, 0)
