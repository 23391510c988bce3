"""Pause and resume, sans-I/O: which requests may pause, their continuations, one stream.

A running request is paused by closing its upstream request and later sending a
*continuation*: the same request whose prompt ends with the text generated so far, with
`max_tokens` reduced by the tokens generated so far. vLLM and SGLang continue a chat's
final assistant message with `continue_final_message: true` and
`add_generation_prompt: false`; a completion's continuation is its prompt plus the text.
With prefix caching the continuation's prefill of the seen tokens costs almost nothing.

`StreamSplicer` owns one paused-and-resumed response. It is fed the SSE bytes of each
upstream segment in turn (the original, then each continuation) and returns the bytes
for the client, who sees one OpenAI stream:

* only whole events are passed on, so a pause cut mid-event never reaches the client;
* until the first pause, events pass byte for byte (no re-encoding on the common path),
  and are not even decoded: they are kept as received and read only when something asks
  what was generated (`can_pause`, `tokens`, `text`, a pause). A stream that is never
  paused is never decoded, except the events that carry usage and `[DONE]`;
* after it, each chunk gets the first segment's `id`, `created` and `model`, a
  continuation's role chunk is dropped, and usage chunks are held back;
* `[DONE]` is sent once, at the very end, after one usage chunk when the client asked for
  `stream_options.include_usage`: the original prompt's tokens and every segment's
  completion tokens (counted from content chunks for cut segments, from usage for the
  last; a segment's prompt is the original's plus the tokens generated before it).

Upstream, every segment is streamed with `include_usage` (`upstream_body`,
`continuation_body`), whatever the client asked: text so far is only known from a
stream, and exact usage only from its usage chunk. A client that did not ask for a stream
gets one JSON body from `response_body()` at the end (the segments merged as
`merge_responses` merges whole answers).

Only plain text generation pauses (`pause_blocker`): n = 1; no tools, structured output,
logprobs, echo, suffix or stop strings (a stop string could straddle the pause and
never match). A stream that turns out to carry anything but text (tool calls, reasoning)
stops being pausable. `PausePolicy` caps the pauses per request and keeps a request that
is close to its `max_tokens` running.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, Final, Literal, final

import orjson

from .._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Kind",
    "PausePolicy",
    "StreamSplicer",
    "continuation_body",
    "merge_responses",
    "pause_blocker",
    "upstream_body",
]

Kind = Literal["chat", "completions"]

DONE: Final = b"data: [DONE]\n\n"
#: An event with usage (an object, not `null`): it is read when it arrives.
_USAGE: Final = re.compile(rb'"usage"\s*:\s*\{')
#: Bytes of unread events kept at most; beyond, they are read (bounds the memory).
_UNREAD_LIMIT: Final = 1 << 18
#: Fields whose presence (with a value other than these) rules out pausing.
_NEVER: Final[Mapping[str, tuple[object, ...]]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "structured_outputs": (None,),
    "logprobs": (None, False),  # 0 equals False here: the stream check below catches it
    "top_logprobs": (None, 0),
    "prompt_logprobs": (None,),
    "echo": (None, False),
    "suffix": (None, ""),
    "stop": (None, "", []),
    "n": (None, 1),
    "best_of": (None, 1),
    "prediction": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
}


@dataclasses.dataclass(frozen=True, slots=True)
class PausePolicy:
    """Who may be paused, for whom, how often and how late.

    Attributes:
        max_pauses: Most pauses per request (0 disables pausing).
        min_remaining_tokens: A request with fewer tokens left before its `max_tokens`
            is never paused: it ends soon anyway, and its pause would cost a prefill.
        max_paused_priority: The highest priority that may be paused (default -1: only
            sheddable work).
        min_pausing_priority: The lowest priority a pause is made for (default 0).
    """

    max_pauses: int = 2
    min_remaining_tokens: int = 32
    max_paused_priority: int = -1
    min_pausing_priority: int = 0

    def __post_init__(self) -> None:
        if self.max_pauses < 0:
            raise ConfigError(f"PausePolicy.max_pauses must be >= 0, got {self.max_pauses!r}")
        if self.min_remaining_tokens < 1:
            raise ConfigError(
                f"PausePolicy.min_remaining_tokens must be >= 1, got {self.min_remaining_tokens!r}"
            )

    def may_pause_for(self, paused: int, waiting: int) -> bool:
        """May a request of priority `paused` make room for one of priority `waiting`?"""
        return (
            paused <= self.max_paused_priority
            and waiting >= self.min_pausing_priority
            and waiting > paused
        )

    def allows(self, *, pauses: int, generated: int, max_tokens: int | None) -> bool:
        """May a request paused `pauses` times, `generated` tokens in, pause again?"""
        if pauses >= self.max_pauses:
            return False
        return max_tokens is None or max_tokens - generated >= self.min_remaining_tokens


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    """The request's output limit (`max_completion_tokens`, else `max_tokens`), or None."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if type(value) is int:
            return value
    return None


def pause_blocker(body: Mapping[str, Any], kind: Kind) -> str | None:
    """Why this request may never be paused, or None when it may (plain text only)."""
    for key, harmless in _NEVER.items():
        if key in body and body[key] not in harmless:
            return f"`{key}` is set"
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("continuous_usage_stats"):
        return "`stream_options.continuous_usage_stats` is set"
    if kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return None if isinstance(prompt, str) else "the prompt is not one string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return "`messages` is not a list of messages"
    continues = body.get("continue_final_message") is True
    if continues and not isinstance(messages[-1].get("content") or "", str):
        return "the continued message's content is not a string"
    return None


def upstream_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The first segment's body: streamed, with usage (see the module docstring)."""
    out = dict(body)
    out["stream"] = True
    out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return out


def continuation_body(
    body: Mapping[str, Any], kind: Kind, text: str, tokens: int
) -> dict[str, Any]:
    """The request that continues `body` after it generated `text` (`tokens` tokens).

    Chat: the text so far becomes (or extends) a final assistant message that the model
    continues. Completions: the prompt ends with the text so far. Output limits shrink by
    `tokens` (never below 1; `min_tokens` never below 0).
    """
    out = upstream_body(body)
    if kind == "chat":
        messages = list(body["messages"])
        last = messages[-1]
        if body.get("continue_final_message") is True and last.get("role") == "assistant":
            messages[-1] = {**last, "content": (last.get("content") or "") + text}
        else:
            messages.append({"role": "assistant", "content": text})
        out["messages"] = messages
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    else:
        prompt = body["prompt"]
        out["prompt"] = [prompt[0] + text] if isinstance(prompt, list) else prompt + text
    for key in ("max_tokens", "max_completion_tokens"):
        if type(out.get(key)) is int:
            out[key] = max(1, out[key] - tokens)
    if type(out.get("min_tokens")) is int:
        out["min_tokens"] = max(0, out["min_tokens"] - tokens)
    return out


@dataclasses.dataclass(slots=True)
class _Segment:
    """What one upstream segment produced, as far as the splicer saw it."""

    parts: list[str] = dataclasses.field(default_factory=list)
    tokens: int = 0  # chunks that carried text: about one token each
    usage: tuple[int, int] | None = None  # (prompt, completion) from its usage chunk
    finish_reason: str | None = None


def _merged_usage(segments: Sequence[_Segment], prompt_hint: int | None) -> tuple[int, int]:
    """(prompt, completion) of the whole answer; see the module docstring."""
    prompt, completion = prompt_hint, 0
    for segment in segments:
        if segment.usage is not None:
            if prompt is None:
                prompt = max(0, segment.usage[0] - completion)
            completion += segment.usage[1]
        else:
            completion += segment.tokens
    return prompt or 0, completion


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def merge_responses(kind: Kind, responses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One non-streamed answer from the answers of successive segments.

    The first one's `id`, `created` and `model`; contents concatenated; the last one's
    finish reason; usage as the stream's (a segment without usage counts no tokens).
    """
    segments = []
    for response in responses:
        choice = (response.get("choices") or [{}])[0]
        text = (
            (choice.get("message") or {}).get("content") if kind == "chat" else choice.get("text")
        )
        usage = response.get("usage")
        segments.append(
            _Segment(
                parts=[text or ""],
                usage=None if not usage else (usage["prompt_tokens"], usage["completion_tokens"]),
                finish_reason=choice.get("finish_reason"),
            )
        )
    first = responses[0]
    return _response(kind, first, segments, _merged_usage(segments, None))


def _response(
    kind: Kind, head: Mapping[str, Any], segments: Sequence[_Segment], usage: tuple[int, int]
) -> dict[str, Any]:
    text = "".join(part for segment in segments for part in segment.parts)
    choice: dict[str, Any] = {"index": 0, "logprobs": None}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["finish_reason"] = segments[-1].finish_reason if segments else None
    return {
        "id": head.get("id"),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [choice],
        "usage": _usage(*usage),
    }


@final
class StreamSplicer:
    """One response assembled from the original stream and its continuations.

    Args:
        body: The client's request body (parsed).
        kind: `"chat"` or `"completions"`.
        policy: Pause limits.
        prompt_tokens: The original prompt's tokens, when known; else derived from the
            first usage chunk (see the module docstring).

    Attributes:
        client_stream: The client asked for a stream (else see `response_body`).
        include_usage: The client asked for a usage chunk.
        pauses: Pauses so far.
        done: The final `[DONE]` arrived.
    """

    def __init__(
        self,
        body: Mapping[str, Any],
        kind: Kind,
        *,
        policy: PausePolicy | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        self.kind: Kind = kind
        self._body = body
        self._policy = policy or PausePolicy()
        self._prompt_hint = prompt_tokens
        self._max_tokens = max_tokens_of(body)
        options = body.get("stream_options")
        self.client_stream = bool(body.get("stream"))
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.pauses = 0
        self.done = False  # the final [DONE] arrived
        self._blocker = pause_blocker(body, kind)
        self._finished = False  # a finish_reason arrived: nothing is left to pause
        self._head: dict[str, Any] = {}
        self._segments = [_Segment()]
        self._buffer = b""
        self._usage_sent = False
        #: Whole events passed on but not read yet, and their size (see `_catch_up`).
        self._unread: list[bytes] = []
        self._unread_size = 0

    def __repr__(self) -> str:
        return (
            f"<StreamSplicer {self.kind} pauses={self.pauses} tokens={self.tokens} "
            f"finished={self.finished} done={self.done}>"
        )

    @property
    def blocker(self) -> str | None:
        """Why the request may not pause (from its body, or from what its stream turned
        out to carry), or None."""
        self._catch_up()
        return self._blocker

    @property
    def finished(self) -> bool:
        """A finish reason arrived: nothing is left to pause."""
        self._catch_up()
        return self._finished

    @property
    def text(self) -> str:
        """The content generated so far, over all segments (whole events only)."""
        self._catch_up()
        return "".join(part for segment in self._segments for part in segment.parts)

    @property
    def tokens(self) -> int:
        """Completion tokens generated so far (usage where known, else counted chunks)."""
        self._catch_up()
        return _merged_usage(self._segments, 0)[1]

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens of the whole answer, as the client is told."""
        self._catch_up()
        return _merged_usage(self._segments, self._prompt_hint)

    @property
    def can_pause(self) -> bool:
        """True when pausing now is safe and within the policy."""
        self._catch_up()
        return (
            self._blocker is None
            and not self._finished
            and not self.done
            and self._policy.allows(
                pauses=self.pauses, generated=self.tokens, max_tokens=self._max_tokens
            )
        )

    def pause(self) -> dict[str, Any] | None:
        """Cut the current segment here; return the continuation's body.

        A partly received event is dropped (it was not passed on and is not counted).
        The next `feed` starts the continuation's stream.

        Returns:
            The continuation request body, or None (and nothing changes) when this
            request may not pause now (`can_pause` is false).
        """
        if not self.can_pause:
            return None
        body = continuation_body(self._body, self.kind, self.text, self.tokens)
        self.pauses += 1
        self._buffer = b""
        self._segments.append(_Segment())
        return body

    def restart(self) -> None:
        """The first segment was cut before anything reached the client and before any
        text: it is sent again as it was, and this one is forgotten (its partial event,
        its `id`)."""
        self._buffer = b""
        self._head = {}
        self._segments[-1] = _Segment()
        self._unread, self._unread_size = [], 0

    def feed(self, data: bytes) -> bytes:
        """Take bytes of the current segment's stream; return the bytes for the client.

        Only whole events are returned (the rest waits for the next call). A client that
        asked for no stream gets nothing here: see `response_body`.
        """
        if self.done:
            return b""
        buffer = self._buffer + data
        if b"\r" in buffer:
            buffer = _normalise_newlines(buffer)
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        complete, self._buffer = buffer[: end + 2], buffer[end + 2 :]
        if self.pauses == 0 and not self._eager(complete):
            self._keep(complete)  # the common path: passed on byte for byte, unread
            return complete if self.client_stream else b""
        raws = complete[:-2].split(b"\n\n")
        out: list[bytes | None] = []
        for raw in raws:
            if self.pauses == 0 and not self._eager(raw):
                self._keep(raw + b"\n\n")
                out.append(None)  # passed on unchanged
            else:
                out.append(self._event(raw))
        if not self.client_stream:
            return b""
        return b"".join(
            raw + b"\n\n" if piece is None else piece for raw, piece in zip(raws, out, strict=True)
        )

    @staticmethod
    def _eager(events: bytes) -> bool:
        """Do these events need reading now? Before a pause, only usage and `[DONE]` do
        (a client may not be sent usage, and `[DONE]` ends the answer); whatever else
        they carry is known to leave them unchanged."""
        return b"[DONE]" in events or (b'"usage"' in events and _USAGE.search(events) is not None)

    def _keep(self, events: bytes) -> None:
        """Keep whole events, passed on unchanged, to read when asked (`_catch_up`)."""
        self._unread.append(events)
        self._unread_size += len(events)
        if self._unread_size > _UNREAD_LIMIT:
            self._catch_up()

    def _catch_up(self) -> None:
        """Read the kept events, in order: until the first pause, events are read only
        when something asks what was generated, so a stream that is never paused is
        never decoded. Reading them then yields what reading each as it came would:
        before a pause, `_event` passes every kept event on unchanged (see `_eager`)."""
        if not self._unread:
            return
        unread, self._unread, self._unread_size = self._unread, [], 0
        for events in unread:
            for raw in events[:-2].split(b"\n\n"):
                self._event(raw)

    def end_with_error(self, message: str, *, error_type: str, code: str) -> bytes:
        """End the client's stream now with an OpenAI-shaped SSE `error` event.

        For a request that cannot go on (say, paused past its TTL). Nothing more is
        passed on afterwards. A client that asked for no stream gets nothing here: it is
        answered with an error status instead.
        """
        self.done = True
        self._buffer = b""
        if not self.client_stream:
            return b""
        error = {"message": message, "type": error_type, "code": code, "param": None}
        return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE

    def response_body(self) -> bytes:
        """The merged non-streamed answer (for a client that asked for no stream)."""
        self._catch_up()
        return orjson.dumps(_response(self.kind, self._head, self._segments, self.usage))

    def _event(self, raw: bytes) -> bytes | None:
        """Track one event; return its replacement bytes, or None to pass it unchanged."""
        payload = _data(raw)
        if payload is None:
            return None  # a comment, or a non-message event such as `error`
        if payload == b"[DONE]":
            self.done = True
            return self._closing()
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._blocker = "the stream carries something other than JSON chunks"
            return None
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return None  # an error object: the gateway decides what it means
        if not self._head:
            self._head = {key: chunk.get(key) for key in ("id", "object", "created", "model")}
        usage = chunk.get("usage")
        segment = self._segments[-1]
        if isinstance(usage, dict):
            segment.usage = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        choices = chunk["choices"]
        if not choices:
            if usage is None:
                return None
            if self.pauses == 0 and self.include_usage:
                self._usage_sent = True  # never paused: the original's usage is the answer's
                return None
            return b""  # held back: the merged usage goes out before [DONE]
        self._catch_up()  # earlier text first
        only_role = self._track(choices[0], segment)
        if self.pauses == 0:
            if usage is None:
                return None
        elif only_role:
            return b""  # a continuation's role chunk: the client already had one
        chunk.pop("usage", None)
        chunk.update(self._head)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _track(self, choice: dict[str, Any], segment: _Segment) -> bool:
        """Record one choice's text and finish reason; True if it carries nothing else
        than a role (the role is removed from a continuation's chunks)."""
        if choice.get("logprobs") is not None:
            self._blocker = "the stream carries logprobs"
        other = False
        if self.kind == "chat":
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if len(delta) > ("role" in delta) + ("content" in delta):  # rare: look closer
                other = any(v for k, v in delta.items() if k not in ("role", "content"))
            if other:
                self._blocker = "the stream carries more than text"
            if self.pauses > 0:
                delta.pop("role", None)
        else:
            text = choice.get("text")
        if text:
            segment.parts.append(text)
            segment.tokens += 1
        reason = choice.get("finish_reason")
        if reason is not None:
            segment.finish_reason = reason
            self._finished = True
        return not text and reason is None and not other

    def _closing(self) -> bytes | None:
        """The bytes that end the client's stream: [DONE], after merged usage if asked."""
        if self._usage_sent or not self.include_usage:
            return None if self.pauses == 0 else DONE
        prompt, completion = self.usage
        chunk = {**self._head, "choices": [], "usage": _usage(prompt, completion)}
        return b"data: " + orjson.dumps(chunk) + b"\n\n" + DONE


def _data(raw: bytes) -> bytes | None:
    """The data of a message event, or None for comments and other event types."""
    if raw.startswith(b"data: ") and b"\n" not in raw:
        return raw[6:]  # the usual one-line event
    lines = raw.split(b"\n")
    data = []
    for line in lines:
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:") and line[6:].strip() not in (b"", b"message"):
            return None
    return b"\n".join(data) if data else None


def _normalise_newlines(buffer: bytes) -> bytes:
    """CRLF and CR line ends as LF; a CR at the very end may be half of a CRLF."""
    held = buffer.endswith(b"\r")
    if held:
        buffer = buffer[:-1]
    buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return buffer + b"\r" if held else buffer
