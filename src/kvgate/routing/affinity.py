"""Which prompt blocks each deployment served recently: the affinity index.

The index answers one question per request — for each candidate deployment, how many leading
links of this prompt's fingerprint did it serve recently — and learns from each routing
decision. It never sees the engines' caches (the precise mode does, from KV events); TTL and
an LRU bound stand in for the engine's own eviction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol


class AffinityIndex(Protocol):
    """Per-deployment sets of recently served block hashes, bounded by TTL and LRU."""

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        """For each deployment, the number of leading ``hashes`` it holds (fresh entries only).

        Costs O(matched links x deployments), never O(index size).
        """
        ...

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        """Note that ``deployment_id`` now holds ``hashes`` (the request was sent there).

        Must not block: a remote backend queues the write.
        """
        ...

    def forget(self, deployment_id: str) -> None:
        """Drop everything known about a deployment (e.g. its cache was flushed)."""
        ...

    def size(self) -> int:
        """Tracked (deployment, block) entries; -1 when the backend cannot tell cheaply."""
        ...

    async def flush(self) -> None:
        """Return once every ``record`` made so far is seen by ``match`` (on every gateway
        sharing the index); a backend that records synchronously returns at once."""
        ...


class MemoryAffinityIndex:
    """One insertion-ordered dict per deployment: block hash -> the second it was last served.

    NOTE: a plain dict instead of ``OrderedDict``: re-inserting a key moves it to the end, so
    iteration order is LRU order, and a dict entry costs about half an OrderedDict node. With
    60-bit keys (small enough for a 32-byte int) and the timestamp object shared by all
    entries written in the same second, 1 million entries take about 75 MB.
    """

    def __init__(
        self,
        *,
        max_blocks_per_deployment: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._max_blocks = max_blocks_per_deployment
        self._ttl_s = ttl_s
        self._blocks: dict[str, dict[int, int]] = {}
        self._tick_value = -1
        self._tick_object: int = -1

    def _now_tick(self) -> int:
        now = int(self._clock())
        if now != self._tick_value:
            # One int object per second, shared by every entry written in that second.
            self._tick_value = now
            self._tick_object = now
        return self._tick_object

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return self.match_now(hashes, deployment_ids)

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        oldest_fresh = int(self._clock() - self._ttl_s)
        counts = []
        for deployment_id in deployment_ids:
            blocks = self._blocks.get(deployment_id)
            matched = 0
            if blocks:
                for block_hash in hashes:
                    seen = blocks.get(block_hash & _KEY_MASK)
                    if seen is None or seen < oldest_fresh:
                        break
                    matched += 1
            counts.append(matched)
        return counts

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        blocks = self._blocks.setdefault(deployment_id, {})
        tick = self._now_tick()
        # Newest-last in LRU order, children before parents: when the bound evicts, a prompt's
        # tail goes before its head, so what remains is still a leading run (as in vLLM, which
        # frees a finished request's blocks tail first).
        for block_hash in reversed(hashes):
            key = block_hash & _KEY_MASK
            blocks.pop(key, None)
            blocks[key] = tick
        excess = len(blocks) - self._max_blocks
        if excess > 0:
            for key in [k for k, _ in zip(blocks, range(excess), strict=False)]:
                del blocks[key]

    def forget(self, deployment_id: str) -> None:
        self._blocks.pop(deployment_id, None)

    def size(self) -> int:
        return sum(len(b) for b in self._blocks.values())

    async def flush(self) -> None:
        return None  # record() writes synchronously


#: Keys are kept to 60 bits so CPython stores them in a 32-byte int rather than 36.
_KEY_MASK = (1 << 60) - 1
