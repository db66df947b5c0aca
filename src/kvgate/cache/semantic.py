"""The semantic cache: an answer reused for a reworded prompt in the same context.

What must match exactly (the *partition*): the tenant, the model, the endpoint, every request
parameter (temperature, max_tokens, tools, ...), every message before the last one, and the
last message's images. Only the last message's text is compared by meaning: its embedding's
cosine similarity with a cached one must reach ``threshold``. So a reworded question hits, while
the same words after a different system prompt or conversation, or another tenant's identical
question, never do (PEERS.md: the tenant mixed into the embedded text, unrelated prompts
hitting one entry).

Entries live in this process: at most ``max_entries`` in all (oldest evicted first), each for
``ttl_s``. A lookup compares the prompt with its partition's entries only (one matrix-vector
product), so its cost does not grow with the cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kvgate.cache.semantic_key import SemanticKey, semantic_key
from kvgate.cache.store import CachedResponse

__all__ = ["SemanticHit", "SemanticIndex", "SemanticKey", "semantic_key"]


@dataclass(slots=True)
class _Partition:
    vectors: np.ndarray
    #: Entry id per row; -1 for a free row.
    ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SemanticHit:
    response: CachedResponse
    similarity: float


class SemanticIndex:
    def __init__(self, *, dimensions: int, max_entries: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dimensions = dimensions
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._partitions: dict[bytes, _Partition] = {}
        # entry id -> (partition, row, expires at, response); insertion order = age.
        self._entries: OrderedDict[int, tuple[bytes, int, float, CachedResponse]] = (
            OrderedDict())
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, partition: bytes, vector: np.ndarray, threshold: float,
               ) -> SemanticHit | None:
        part = self._partitions.get(partition)
        if part is None or not part.ids:
            return None
        similarities = part.vectors[: len(part.ids)] @ vector
        above = np.flatnonzero(similarities >= threshold)  # usually none or a few: sort only them
        now = self._clock()
        for row in above[np.argsort(-similarities[above])]:
            similarity = float(similarities[row])
            entry_id = part.ids[row]
            if entry_id < 0:
                continue
            _, _, expires_s, response = self._entries[entry_id]
            if expires_s < now:
                self._remove(entry_id)
                continue
            return SemanticHit(response, similarity)
        return None

    def insert(self, partition: bytes, vector: np.ndarray, response: CachedResponse) -> None:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(
                np.zeros((4, self._dimensions), dtype=np.float32))
        try:
            row = part.ids.index(-1)
        except ValueError:
            row = len(part.ids)
            part.ids.append(-1)
            if row == len(part.vectors):
                part.vectors = np.concatenate([part.vectors, np.zeros_like(part.vectors)])
        entry_id = self._next_id
        self._next_id += 1
        part.vectors[row] = vector
        part.ids[row] = entry_id
        self._entries[entry_id] = (partition, row, self._clock() + self._ttl_s, response)
        while len(self._entries) > self._max_entries:
            self._remove(next(iter(self._entries)))

    def _remove(self, entry_id: int) -> None:
        partition, row, _, _ = self._entries.pop(entry_id)
        part = self._partitions[partition]
        part.ids[row] = -1
        part.vectors[row] = 0.0
        while part.ids and part.ids[-1] == -1:
            part.ids.pop()
        if not part.ids:
            del self._partitions[partition]
