"""Literal request records for the statistics tests."""

from __future__ import annotations

from sluicegate.testbed import COMPLETED, PlannedRequest, RequestRecord

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"w"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def planned(index: int = 0, objective: str = "interactive", tenant: str = "t0") -> PlannedRequest:
    return PlannedRequest(
        index=index,
        at=0.0,
        tenant=tenant,
        objective=objective,
        priority=10,
        prompt_tokens=10,
        max_tokens=10,
    )


def record(
    sent_at: float,
    token_at: list[float],
    *,
    end: float | None = None,
    outcome: str | None = COMPLETED,
    objective: str = "interactive",
    tenant: str = "t0",
) -> RequestRecord:
    """A request sent at `sent_at` whose tokens arrived at `token_at`."""
    rec = RequestRecord(planned(objective=objective, tenant=tenant), sent_at)
    for t in token_at:
        rec.meter.feed(TOKEN, t)
    if outcome is not None:
        if outcome == COMPLETED:
            rec.meter.feed(DONE, token_at[-1] if token_at else sent_at)
        rec.finish(outcome, end if end is not None else (token_at[-1] if token_at else sent_at))
    return rec
