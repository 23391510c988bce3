"""Token accounting: what each flow is charged, for fairness and its statistics.

A request is charged its estimated tokens when it is dispatched; reports of its actual
usage (running totals) replace the estimate, charging or refunding the difference. Every
count is clamped to `MAX_REQUEST_TOKENS`. The charge, divided by the flow's weight, is
what `token-fair` equalises and what the windowed statistics sum per time bucket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._ticket import State

if TYPE_CHECKING:
    from ._registry import Flow
    from ._ticket import Ticket

__all__ = ["MAX_REQUEST_TOKENS", "charge", "estimate", "learn_output", "record_usage"]

#: Most tokens (input or output) one request is charged, in estimates and in reports:
#: longer than any model's context today, and small enough that the sum of many such
#: charges keeps a float counter exact to well below one token, so one absurd figure
#: (max_tokens = 2**63 - 1) cannot push a flow's counter or a band's virtual time out of
#: the range where ordinary costs still register.
MAX_REQUEST_TOKENS: Final = 1 << 24
#: Prompt-size estimate when the caller gives none: about 4 bytes of text per token.
_BYTES_PER_TOKEN: Final = 4
#: Output estimate for a flow with no history and no max_tokens.
_DEFAULT_OUTPUT_TOKENS: Final = 256
#: Weight of the newest actual output in the flow's moving average.
_OUTPUT_AVERAGE_WEIGHT: Final = 0.2
#: Buckets per fairness window.
_WINDOW_BUCKETS: Final = 20


def estimate(
    ticket: Ticket, flow: Flow, input_tokens: int | None, output_tokens: int | None
) -> None:
    """Set a new ticket's token estimates, clamped; None = estimate it (input from the
    size, output from the flow's history, else its band's, else a fixed prior)."""
    if input_tokens is None:
        input_tokens = -(-ticket._size // _BYTES_PER_TOKEN)
    if output_tokens is None:
        average = flow.output_average
        if average is None:
            average = flow.band.output_average
        output_tokens = _DEFAULT_OUTPUT_TOKENS if average is None else round(average)
    ticket._input_tokens = min(input_tokens, MAX_REQUEST_TOKENS)
    ticket._output_tokens = min(output_tokens, MAX_REQUEST_TOKENS)


def charge(flow: Flow, input_tokens: int, output_tokens: int, now: float, window: float) -> None:
    """Account tokens served to `flow` (negative counts refund an over-estimate).

    Args:
        window: the fairness window in seconds (the statistics keep a bit more).
    """
    band = flow.band
    flow.input_tokens += input_tokens
    flow.output_tokens += output_tokens
    cost = (
        band.config.input_token_weight * input_tokens
        + band.config.output_token_weight * output_tokens
    )
    if not cost:
        return
    service = cost / flow.weight
    flow.service += service
    log = band.service_log
    width = window / _WINDOW_BUCKETS
    if not log or now >= log[-1][0] + width:
        while log and log[0][0] < now - window - width:
            log.popleft()
        log.append((now, {}))
    bucket = log[-1][1]
    bucket[flow] = bucket.get(flow, 0.0) + service
    band.fairness.charge(flow, service)


def record_usage(
    ticket: Ticket,
    input_tokens: int | None,
    output_tokens: int | None,
    now: float,
    window: float,
    *,
    final: bool,
) -> None:
    """Replace a dispatched ticket's charged tokens by actual usage (running totals).

    Only a final output count feeds the flow's output estimate (once released).
    """
    flow = ticket._flow
    if input_tokens is not None:
        input_tokens = min(input_tokens, MAX_REQUEST_TOKENS)
    if output_tokens is not None:
        output_tokens = min(output_tokens, MAX_REQUEST_TOKENS)
    d_in = 0 if input_tokens is None else input_tokens - ticket._input_tokens
    d_out = 0 if output_tokens is None else output_tokens - ticket._output_tokens
    if output_tokens is not None:
        ticket._usage_known = final
        if final and ticket._state is State.RELEASED:
            learn_output(flow, output_tokens)
    ticket._input_tokens += d_in
    ticket._output_tokens += d_out
    if d_in or d_out:
        charge(flow, d_in, d_out, now, window)


def learn_output(flow: Flow, actual: int) -> None:
    """Fold a final output count into the flow's and its band's moving averages."""
    for owner in (flow, flow.band):
        average = owner.output_average
        owner.output_average = (
            actual if average is None else average + _OUTPUT_AVERAGE_WEIGHT * (actual - average)
        )
