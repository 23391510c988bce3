"""Seeded decisions taken when a request arrives: output length, content, failure.

Two generators seeded from `SimConfig.seed` make every decision, in arrival order, so a
given seed and arrival sequence give the same lengths, words and failures. Failures draw
from their own generator: turning injection on or off does not change the lengths.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Final

from ._errors import InvalidRequestError
from ._openai import split_tokens

if TYPE_CHECKING:
    from ._config import FailureType, SimConfig
    from ._openai import ParsedRequest

__all__ = ["Plan", "Planner"]

# Filler for `random` mode; each word is one token of output. Every word is three letters
# after a space, four characters like every token of the simulator's tokenizer, so the
# text a request generated tokenizes back into the same tokens (a continuation's prompt
# then counts, and hits the prefix cache, exactly as its first run generated it).
_WORDS: Final = (
    "the", "old", "dam", "let", "new", "sea", "run", "far", "and", "its", "big", "red",
    "fox", "low", "sun", "set", "raw", "ice", "eat", "hot", "tea", "cup", "map", "key",
    "bay", "oak", "elm", "ash", "ivy", "fig", "jam", "log", "mud", "net", "owl", "pad",
    "ray", "sky", "tin", "urn", "van", "wax",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one request will produce."""

    output_tokens: int
    finish_reason: str
    failure: FailureType | None
    echo: tuple[str, ...]
    offset: int

    def token_text(self, index: int) -> str:
        """The text of output token `index`."""
        if self.echo:
            return self.echo[index]
        return " " + _WORDS[(self.offset + index) % len(_WORDS)]

    def text(self, count: int) -> str:
        """The text of the first `count` output tokens."""
        return "".join(self.token_text(i) for i in range(count))


class Planner:
    """Draws each arriving request's `Plan` from seeded generators."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._fault_rng = random.Random(f"faults-{config.seed}")

    def plan(
        self, req: ParsedRequest, failure_rate: float, failure_types: tuple[FailureType, ...]
    ) -> Plan:
        """Decide the output of `req`.

        Args:
            req: The parsed request.
            failure_rate: Percent of requests to fail, 0..100.
            failure_types: Failures to draw from.

        Raises:
            InvalidRequestError: Prompt plus output exceed `max_model_len`.
        """
        config = self._config
        room = config.max_model_len - req.prompt_tokens
        wanted = req.max_tokens or 1
        if wanted > room:
            raise InvalidRequestError(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {req.prompt_tokens + wanted} tokens "
                f"({req.prompt_tokens} in the messages, {wanted} in the completion)."
            )
        natural = self._rng.randint(1, min(room, config.random_output_max))
        offset = self._rng.randrange(1 << 16)
        echo: tuple[str, ...] = ()
        if config.mode == "echo":
            echo = tuple(split_tokens(req.echo_text)) or (" ",)
            output = min(len(echo), room, req.max_tokens or room)
            reason = "stop" if output == len(echo) else "length"
        elif req.max_tokens is not None:
            output, reason = req.max_tokens, "length"
        else:
            output, reason = natural, "stop"
        failure: FailureType | None = None
        if failure_rate > 0 and self._fault_rng.random() * 100.0 < failure_rate:
            failure = self._fault_rng.choice(failure_types)
        return Plan(output, reason, failure, echo, offset)
