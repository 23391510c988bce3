from __future__ import annotations

from collections.abc import Callable

import pytest

from sluicegate import FlowControlConfig, FlowKey
from sluicegate._core._scheduler import Scheduler
from sluicegate._core._ticket import Ticket
from sluicegate.testing import ManualDetector

Submit = Callable[..., Ticket]


class Harness:
    """A scheduler plus a manual gate, driven with literal times."""

    def __init__(self, config: FlowControlConfig, gate: ManualDetector) -> None:
        self.core = Scheduler(config)
        self.gate = gate

    def submit(
        self,
        fid: str = "a",
        priority: int = 0,
        *,
        size: int = 0,
        ttl: float | None = None,
        slo: float | None = None,
        now: float = 0.0,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        nowait: bool = False,
    ) -> Ticket:
        args = (FlowKey(fid, priority), size, ttl, slo, now, self.gate)
        if nowait:
            return self.core.submit(*args, input_tokens, output_tokens, nowait=True)
        return self.core.submit(*args, input_tokens, output_tokens)

    def dispatch_one(self, now: float = 0.0) -> Ticket | None:
        """Dispatch exactly one request (the gate saturates right after it)."""
        gate = self.gate
        gate.saturated = False
        original = gate.on_dispatch

        def once(ticket: Ticket) -> None:
            original(ticket)
            gate.saturated = True

        gate.on_dispatch = once  # type: ignore[method-assign]  # a test double
        try:
            out = self.core.dispatch(now, gate)
        finally:
            del gate.on_dispatch
            gate.saturated = True
        return out[0] if out else None

    def dispatch(self, now: float = 0.0) -> list[Ticket]:
        return self.core.dispatch(now, self.gate)

    def release(self, ticket: Ticket, now: float = 0.0) -> bool:
        return self.core.release(ticket, now, self.gate)


@pytest.fixture
def make() -> Callable[..., Harness]:
    def factory(config: FlowControlConfig | None = None, *, saturated: bool = True) -> Harness:
        return Harness(config or FlowControlConfig(), ManualDetector(saturated=saturated))

    return factory
