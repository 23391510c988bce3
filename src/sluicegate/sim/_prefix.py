"""Automatic prefix caching, as vLLM's (`--enable-prefix-caching`).

vLLM keeps the KV of every full block of `block_size` tokens under a hash of the block's
tokens chained to the hash of the block before it, so equal hashes mean equal prefixes.
A new request (or a preempted one coming back) skips the prefill of the longest run of
leading blocks whose hashes are cached, except that its last token is always computed.
Blocks held by running requests stay cached; a released block keeps its hash until its
memory is needed, least recently released first (a request releases its blocks tail
first, so the tail of a prefix goes before its head).

The simulator's tokenizer is four characters a token, so a block here is
`4 x block_size` characters of the request's text (the prompt as rendered, then the text
it generates). Hashing text rather than token ids makes a continuation (the prompt plus
the text generated so far) hit the blocks its first run filled, as re-tokenizing the
same text does in a real engine.

The memory model stays the engine's: a running request holds `prompt + generated` tokens
of KV whether or not its blocks are shared (the simulator models the prefill a hit saves,
not memory sharing), and released blocks live in the free part of the KV cache:
`evictable blocks x block_size <= kv_cache_size - kv_used` at all times.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CHARS_PER_TOKEN", "BlockHasher", "PrefixCache"]

#: The simulator's tokenizer (see `_openai.split_tokens`): a token is four characters.
CHARS_PER_TOKEN: Final = 4


@final
class BlockHasher:
    """The chained block hashes of one request's text, extended as it generates.

    Args:
        text: The prompt as rendered.
        block_size: Tokens per block.
    """

    __slots__ = ("_block_chars", "_parent", "_pending", "hashes")

    def __init__(self, text: str, block_size: int) -> None:
        self._block_chars = block_size * CHARS_PER_TOKEN
        self._parent = 0
        self._pending = ""
        self.hashes: list[int] = []
        self.extend(text)

    def extend(self, text: str) -> int:
        """Append `text`; return how many blocks it completed (their hashes are appended)."""
        pending = self._pending + text
        size = self._block_chars
        if len(pending) < size:
            self._pending = pending  # the usual case: no block completed
            return 0
        full = len(pending) // size
        for i in range(full):
            self._parent = hash((self._parent, pending[i * size : (i + 1) * size]))
            self.hashes.append(self._parent)
        self._pending = pending[full * size :]
        return full


@final
class PrefixCache:
    """Cached blocks by hash: reference counts for running requests, LRU for the rest.

    Args:
        block_size: Tokens per block.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._held: dict[int, int] = {}  # hash -> running requests holding it
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict()  # LRU first

    def __len__(self) -> int:
        return len(self._held) + len(self._free)

    @property
    def evictable_blocks(self) -> int:
        """Cached blocks no running request holds (they occupy free KV)."""
        return len(self._free)

    def cached_prefix(self, hashes: list[int], limit: int) -> int:
        """Leading blocks of `hashes` (at most `limit`) that are cached."""
        count = 0
        for block in hashes[:limit]:
            if block not in self._held and block not in self._free:
                break
            count += 1
        return count

    def hold(self, hashes: Iterable[int]) -> None:
        """A running request holds these blocks (cached from now on if they were not)."""
        held, free = self._held, self._free
        for block in hashes:
            if block in free:
                del free[block]
            held[block] = held.get(block, 0) + 1

    def release(self, hashes: list[int]) -> None:
        """A request stops holding these blocks; unheld ones become evictable, tail first."""
        held, free = self._held, self._free
        for block in reversed(hashes):
            count = held.get(block, 0) - 1
            if count > 0:
                held[block] = count
            elif count == 0:
                del held[block]
                free[block] = None

    def evict_to(self, free_tokens: int) -> int:
        """Evict least recently released blocks until they fit in `free_tokens`.

        Returns:
            The number of blocks evicted.
        """
        room = max(0, free_tokens) // self.block_size
        evicted = 0
        free = self._free
        while len(free) > room:
            free.popitem(last=False)
            evicted += 1
        return evicted
