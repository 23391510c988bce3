"""The OpenAI/vLLM wire format: request parsing, token estimates, response bytes.

Tokens are estimated without a tokenizer: a token is four characters of text (the usual
rule of thumb for English), so `/tokenize`, `usage.prompt_tokens` and the engine agree.
Streamed chunks are built from pre-encoded prefix and suffix bytes around the JSON-encoded
token text, which costs a fraction of encoding a dict per chunk; their shapes match
vLLM's (`chat.completion.chunk` and `text_completion`, `data: [DONE]` at the end).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any, Final, Literal

import orjson

from ._errors import InvalidRequestError, ModelNotFoundError

__all__ = [
    "CHARS_PER_TOKEN",
    "DONE",
    "Kind",
    "ParsedRequest",
    "StreamEncoder",
    "count_tokens",
    "error_body",
    "full_response",
    "parse_request",
    "parse_tokenize",
    "split_tokens",
    "token_ids",
]

Kind = Literal["chat", "completions"]
CHARS_PER_TOKEN: Final = 4
DONE: Final = b"data: [DONE]\n\n"
_VOCAB_SIZE: Final = 32000


def split_tokens(text: str) -> list[str]:
    """Split `text` into pseudo-tokens of `CHARS_PER_TOKEN` characters."""
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def count_tokens(text: str) -> int:
    """Estimate the tokens of `text` (at least 1, as a model always sees a BOS token)."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def token_ids(text: str) -> list[int]:
    """Deterministic fake token ids for `text`, one per pseudo-token."""
    return [zlib.crc32(piece.encode()) % _VOCAB_SIZE for piece in split_tokens(text)] or [1]


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The parts of a completion request the simulator uses.

    `prompt_text` is the prompt as the engine sees it (the prefix cache hashes it); a
    continued assistant message follows it directly, so a request's prompt plus the
    text it generated is exactly the prompt text of its continuation.
    """

    kind: Kind
    model: str
    prompt_tokens: int
    echo_text: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    priority: int
    prompt_text: str = ""
    #: It continues a final assistant message (a resumed request, say).
    continued: bool = False


def parse_request(body: bytes | bytearray, kind: Kind, served: tuple[str, ...]) -> ParsedRequest:
    """Parse a `/v1/chat/completions` or `/v1/completions` body.

    Raises:
        InvalidRequestError: The body is not a valid request.
        ModelNotFoundError: `model` is not one of `served`.
    """
    data = _load_object(body)
    model = data.get("model", served[0])
    if model not in served:
        raise ModelNotFoundError(f"The model `{model}` does not exist.")
    continued = False
    if kind == "chat":
        continued = _continues(data)
        prompt_text, echo_text = _chat_prompt(data.get("messages"), continued)
    else:
        prompt_text = _completion_prompt(data.get("prompt"))
        echo_text = prompt_text
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise InvalidRequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if data.get("n", 1) != 1:
        raise InvalidRequestError("the simulator supports n=1 only")
    options = data.get("stream_options") or {}
    priority = data.get("priority", 0)
    if type(priority) is not int:
        raise InvalidRequestError(f"priority must be an integer, got {priority!r}")
    return ParsedRequest(
        kind=kind,
        model=model,
        prompt_tokens=count_tokens(prompt_text),
        echo_text=echo_text,
        max_tokens=max_tokens,
        stream=bool(data.get("stream", False)),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        priority=priority,
        prompt_text=prompt_text,
        continued=continued,
    )


def _continues(data: dict[str, Any]) -> bool:
    """vLLM's chat template options: continue the final message, or open a new turn."""
    flags = {}
    for name, default in (("continue_final_message", False), ("add_generation_prompt", True)):
        value = data.get(name, default)
        if type(value) is not bool:
            raise InvalidRequestError(f"`{name}` must be a boolean, got {value!r}")
        flags[name] = value
    if flags["continue_final_message"] and flags["add_generation_prompt"]:
        raise InvalidRequestError(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        )
    return flags["continue_final_message"]


def parse_tokenize(body: bytes | bytearray) -> str:
    """Return the text of a vLLM `/tokenize` body (`prompt` or chat `messages`).

    Raises:
        InvalidRequestError: Neither field is usable.
    """
    data = _load_object(body)
    if "messages" in data:
        return _chat_prompt(data["messages"], _continues(data))[0]
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequestError("/tokenize needs a string `prompt` or `messages`")
    return prompt


def _load_object(body: bytes | bytearray) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return data


def _chat_prompt(messages: object, continues: bool) -> tuple[str, str]:
    """The rendered prompt and the text echo mode repeats.

    Messages are joined by newlines. A continued final assistant message follows the
    others directly (the generation prompt adds no characters), and echo mode then
    echoes the rest of the message before it: a continued echo reads as one.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("`messages` must be a non-empty list")
    texts = [_message_text(message) for message in messages]
    if not continues:
        return "\n".join(texts), texts[-1]
    if messages[-1].get("role") != "assistant":
        raise InvalidRequestError(
            "`continue_final_message` needs a final message with role `assistant`"
        )
    head, partial = "\n".join(texts[:-1]), texts[-1]
    echo = texts[-2] if len(texts) > 1 else partial
    if echo.startswith(partial):
        echo = echo[len(partial) :]
    return head + partial, echo


def _message_text(message: object) -> str:
    if not isinstance(message, dict):
        raise InvalidRequestError("each message must be an object")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise InvalidRequestError("message content must be a string or a list of parts")


def _completion_prompt(prompt: object) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        # One token a 4-character piece, so the count is exact and equal ids share blocks.
        return "".join(format(t % 65536, "04x") for t in prompt)
    raise InvalidRequestError("`prompt` must be a string, a list of one string, or token ids")


def error_body(message: str, error_type: str, status: int) -> bytes:
    """An OpenAI-style error body (the `openai` client reads `error.message`)."""
    error = {"message": message, "type": error_type, "param": None, "code": status}
    return orjson.dumps({"error": error, "object": "error", **error})


def _usage(prompt_tokens: int, completion_tokens: int, cached: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


class StreamEncoder:
    """Builds the SSE events of one streamed response."""

    __slots__ = ("_head", "_kind", "_prefix", "_suffix", "_usage_head")

    def __init__(self, kind: Kind, request_id: str, model: str) -> None:
        self._kind = kind
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
            orjson.dumps(request_id),
            obj.encode(),
            int(time.time()),  # a timestamp field, not timing logic
            orjson.dumps(model),
        )
        self._head = head
        if kind == "chat":
            self._prefix = head + b'[{"index":0,"delta":{"content":'
            self._suffix = b'},"logprobs":null,"finish_reason":'
        else:
            self._prefix = head + b'[{"index":0,"text":'
            self._suffix = b',"logprobs":null,"finish_reason":'
        self._usage_head = head + b'[],"usage":'

    def role(self) -> bytes:
        """The first chat chunk, announcing the assistant role (empty for completions)."""
        if self._kind != "chat":
            return b""
        delta = b'[{"index":0,"delta":{"role":"assistant","content":""},'
        return self._head + delta + b'"logprobs":null,"finish_reason":null}]}\n\n'

    def token(self, text: str, finish_reason: str | None = None) -> bytes:
        """One token's chunk; the last one carries `finish_reason`."""
        reason = b"null" if finish_reason is None else b'"%s"' % finish_reason.encode()
        return self._prefix + orjson.dumps(text) + self._suffix + reason + b"}]}\n\n"

    def usage(self, prompt_tokens: int, completion_tokens: int, cached: int | None = None) -> bytes:
        """The `include_usage` chunk: no choices, only usage (cached: prompt details)."""
        usage = _usage(prompt_tokens, completion_tokens, cached)
        return self._usage_head + orjson.dumps(usage) + b"}\n\n"


def full_response(  # the fields of one non-streamed answer
    req: ParsedRequest,
    request_id: str,
    text: str,
    finish_reason: str,
    completion_tokens: int,
    cached: int | None = None,
) -> bytes:
    """The body of a non-streamed response, shaped like vLLM's (cached: prompt details)."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
    if req.kind == "chat":
        choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        obj = "chat.completion"
    else:
        choice["text"] = text
        obj = "text_completion"
    choice["stop_reason"] = None
    return orjson.dumps(
        {
            "id": request_id,
            "object": obj,
            "created": int(time.time()),  # a timestamp field, not timing logic
            "model": req.model,
            "choices": [choice],
            "usage": _usage(req.prompt_tokens, completion_tokens, cached),
        }
    )
