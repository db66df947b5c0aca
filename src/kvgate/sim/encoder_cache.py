"""Vision-encoder outputs shared across requests (vLLM's EncoderCacheManager, simplified).

An image's encoder runs when the first chunk covering its placeholder tokens is scheduled and
its output is not already cached; a second request with the same image hash while the output is
still resident skips the encoder. Capacity is in tokens and least recently used entries go first.
An image whose placeholders are all served from the prefix cache is never scheduled, so it is
never encoded -- that is where most of a warm multimodal request's savings come from.
"""

from __future__ import annotations

from collections import OrderedDict


class EncoderCache:
    """Resident encoder outputs keyed by mm identifier, bounded in tokens."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._used_tokens = 0

    def __contains__(self, identifier: str) -> bool:
        return identifier in self._entries

    def encode(self, identifier: str, num_tokens: int) -> int:
        """Vision tokens the encoder must compute for this item now (0 when cached)."""
        if identifier in self._entries:
            self._entries.move_to_end(identifier)
            return 0
        while self._entries and self._used_tokens + num_tokens > self.capacity_tokens:
            _, freed = self._entries.popitem(last=False)
            self._used_tokens -= freed
        if num_tokens <= self.capacity_tokens:
            self._entries[identifier] = num_tokens
            self._used_tokens += num_tokens
        return num_tokens

    def clear(self) -> None:
        self._entries.clear()
        self._used_tokens = 0
