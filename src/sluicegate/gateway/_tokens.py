"""Token estimates before dispatch and actual usage after it, for token accounting.

The controller charges a request's estimated tokens when it is dispatched; the gateway
then reports what the backend really used (`Ticket.record_usage`, running totals), and
the difference is charged or refunded to the flow.

* Estimates are cheap: the request body is already parsed, so the prompt's characters
  are summed (4 characters a token, the usual rule for English); output is the body's
  ``max_completion_tokens`` / ``max_tokens``, else left to the controller (the flow's
  recent average). A pool may instead ask a backend's ``/tokenize``.
* A non-streamed answer is not parsed again: its ``usage`` object is found from the end
  of the body and only that slice is decoded.
* A stream is counted as it passes: each SSE ``data:`` event is about one token. While
  it runs, the count is a lower bound of the final cost and the estimate the expected
  cost, so the ticket keeps the larger: the count is reported each time it passes what
  is charged by `REPORT_EVERY` events (not at each event: a report costs a couple of
  microseconds in the controller and adds to its fairness log). At the end the count
  replaces the estimate, and a ``usage`` chunk, when the client asked for one, replaces
  the count.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, final

import aiohttp
import orjson

if TYPE_CHECKING:
    import sluicegate as sg

    from ._adaptive import ResponseObserver

__all__ = [
    "MAX_OUTPUT_ESTIMATE",
    "REPORT_EVERY",
    "UsageMeter",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "find_usage",
    "tokenize",
]

_log = logging.getLogger("sluicegate.gateway")

CHARS_PER_TOKEN: Final = 4
#: Largest output estimate charged at dispatch: longer than the output limit of today's
#: models; actual usage replaces the estimate anyway.
MAX_OUTPUT_ESTIMATE: Final = 32_768
#: Streamed events between two reports of the running output count.
REPORT_EVERY: Final = 16
#: How far back from the end of a body (or chunk) `usage` is looked for.
_USAGE_TAIL: Final = 4096
_TOKENIZE_TIMEOUT: Final = aiohttp.ClientTimeout(total=2.0)


def _text_chars(value: object) -> int | None:
    """Characters of a prompt-like value (str, list of str or parts); None if unknown."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, dict):
                text = item.get("text")
                total += len(text) if isinstance(text, str) else 0
            else:
                return None
        return total
    return None


def estimate_input_tokens(doc: dict[str, Any]) -> int | None:
    """Prompt tokens of a parsed request body: message contents, ``prompt`` or ``input``.

    Returns None when the body has no recognisable text (the controller then uses the
    body size). Token-id prompts (lists of ints) count exactly.
    """
    messages = doc.get("messages")
    if isinstance(messages, list):
        chars = 0
        for message in messages:
            if isinstance(message, dict):
                chars += _text_chars(message.get("content")) or 0
        return -(-chars // CHARS_PER_TOKEN)
    for field in ("prompt", "input"):
        value = doc.get(field)
        if value is None:
            continue
        if isinstance(value, list) and value and all(type(t) is int for t in value):
            return len(value)
        counted = _text_chars(value)
        return None if counted is None else -(-counted // CHARS_PER_TOKEN)
    return None


def estimate_output_tokens(doc: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` or ``max_tokens`` when set (an upper bound), else None.

    Clamped to `MAX_OUTPUT_ESTIMATE`: the client chooses the figure, and one absurd
    value must not buy its tenant a huge charge (and a long wait) or skew fairness.
    """
    for field in ("max_completion_tokens", "max_tokens"):
        value = doc.get(field)
        if type(value) is int and value >= 0:
            return min(value, MAX_OUTPUT_ESTIMATE)
    return None


def find_usage(data: bytes) -> tuple[int | None, int | None] | None:
    """(prompt_tokens, completion_tokens) of the last ``"usage": {...}`` in `data`.

    Only the object itself is decoded; None when there is none (or ``"usage": null``).
    """
    at = data.rfind(b'"usage"', max(0, len(data) - _USAGE_TAIL))
    if at < 0:
        return None
    start = data.find(b"{", at + 7, at + 40)
    if start < 0 or data[at + 7 : start].strip() != b":":
        return None
    end = data.find(b"}", start)
    # Usage may nest detail objects ({"prompt_tokens_details": {...}}): extend to the
    # brace that balances, which is near, as usage objects are small.
    while end >= 0 and data.count(b"{", start, end) != data.count(b"}", start, end + 1):
        end = data.find(b"}", end + 1)
    if end < 0:
        return None
    try:
        usage = orjson.loads(data[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if type(prompt) is int and prompt >= 0 else None,
        completion if type(completion) is int and completion >= 0 else None,
    )


@final
class UsageMeter:
    """Feeds one dispatched request's actual usage back to its ticket.

    Reports are running totals, so a ``usage`` object in any chunk (the final
    ``include_usage`` chunk, or vLLM's continuous usage stats) simply replaces the count.
    An error status means the request was refused: nothing is charged (input included).

    Args:
        ticket: the dispatched ticket.
        observer: told when the answer starts, fails and ends (an adaptive detector
            learns its backend's limit from it).
    """

    __slots__ = (
        "_carry",
        "_done",
        "_error",
        "_events",
        "_first",
        "_observer",
        "_reported",
        "_streaming",
        "_ticket",
        "_usage_seen",
    )

    def __init__(self, ticket: sg.Ticket, observer: ResponseObserver | None = None) -> None:
        self._ticket = ticket
        self._observer = observer
        self._events = 0
        #: What the ticket is charged for output now (the estimate until a report).
        self._reported = ticket.output_tokens
        self._usage_seen = False
        self._streaming = False
        self._error = False
        self._done = False
        self._carry = b""
        self._first = True  # the observer is told of the first chunk only

    def body(self, status: int, data: bytes) -> None:
        """A whole non-streamed answer: record its ``usage``."""
        self._observe_status(status, stream=False)
        if status >= 400:
            self._refund_output()
            return
        usage = find_usage(data)
        if usage is not None:
            self._usage_seen = True
            self._record(*usage)

    def begin(self, status: int) -> None:
        """A stream starts with `status`."""
        self._observe_status(status, stream=True)
        self._streaming = True
        if status >= 400:
            self._refund_output()

    def failed(self) -> None:
        """No byte was relayed (the backend refused or was unreachable): no output."""
        if self._observer is not None:
            self._observer.failed()
            self._observer = None
        if not self._events and not self._usage_seen:
            self._refund_output()

    def chunk(self, data: bytes) -> None:
        """Part of a stream, as read: count its events, or take its ``usage``.

        Called for every relayed chunk: a few byte scans in C, no decoding unless the
        chunk names ``usage``."""
        if self._first:
            self._first = False
            if self._observer is not None:
                self._observer.first_chunk()
        if self._error:
            return
        if (self._carry or b'"usage"' in data) and self._take_usage(data):
            return
        if self._usage_seen:
            return
        events = data.count(b"data:")
        if not events:
            return
        if b"[DONE]" in data:
            events -= 1
            self._done = True
        if not self._events and b'"role"' in data:
            events -= 1  # the chat stream's first event announces the role: no token
        self._events += events
        if self._events - self._reported >= REPORT_EVERY:
            self._reported = self._events
            self._record(None, self._events, final=False)

    def _take_usage(self, data: bytes) -> bool:
        data = self._carry + data
        self._carry = b""
        usage = find_usage(data)
        if usage is not None and usage[1] is not None:
            self._usage_seen = True
            self._record(*usage)
            return True
        at = data.rfind(b'"usage"')
        if at >= 0 and usage is None:
            tail = data[at:]
            if b"null" not in tail[:16] and len(tail) < _USAGE_TAIL:
                self._carry = tail  # the usage object continues in the next read
        return False

    def abandon(self) -> None:
        """The request was taken back before its answer started: record nothing."""
        if self._observer is not None:
            self._observer.ended()
            self._observer = None
        self._error = True

    def close(self) -> None:
        """The response ended (or broke): a stream's count stands if no usage came."""
        if self._observer is not None:
            self._observer.ended()
            self._observer = None
        if self._usage_seen or self._error or not self._streaming:
            return
        if self._events != self._reported or self._done:
            self._reported = self._events
            # A stream that ended with [DONE] is complete; one cut short is not, and
            # must not teach the flow's output estimate.
            self._record(None, self._events, final=self._done)

    def _observe_status(self, status: int, *, stream: bool) -> None:
        observer = self._observer
        if observer is None:
            return
        if status >= 500 or status == 429:
            observer.failed()
            self._observer = None
        elif stream and status < 400:
            observer.stream_started()

    def _refund_output(self) -> None:
        # A refused request is charged nothing, and says nothing about typical output.
        self._error = True
        self._record(0, 0, final=False)

    def _record(
        self, input_tokens: int | None, output_tokens: int | None, *, final: bool = True
    ) -> None:
        self._ticket.record_usage(
            input_tokens=input_tokens, output_tokens=output_tokens, final=final
        )


async def tokenize(
    session: aiohttp.ClientSession, base: str, doc: dict[str, Any], headers: dict[str, str]
) -> int | None:
    """Prompt tokens from a backend's vLLM-style ``/tokenize``; None when it cannot say."""
    body: dict[str, Any] = {"model": doc.get("model")}
    if "messages" in doc:
        body["messages"] = doc["messages"]
    elif isinstance(doc.get("prompt"), str):
        body["prompt"] = doc["prompt"]
    else:
        return None
    try:
        async with session.post(
            base + "/tokenize", data=orjson.dumps(body), headers=headers, timeout=_TOKENIZE_TIMEOUT
        ) as resp:
            if resp.status != 200:
                _log.debug("backend=%s /tokenize answered %d", base, resp.status)
                return None
            count = orjson.loads(await resp.read()).get("count")
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError) as exc:
        _log.debug("backend=%s /tokenize failed: %r", base, exc)
        return None
    return count if type(count) is int and count >= 0 else None
