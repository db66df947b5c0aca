"""Bounded key-value stores for cached responses (TTL + LRU, the bound in config)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from kvgate.core.provider import JSONObject


@dataclass(frozen=True, slots=True)
class CachedResponse:
    body: JSONObject
    upstream_model: str
    deployment_id: str


class ResponseStore(Protocol):
    """Where cached responses live. ``get`` never returns an entry older than its TTL."""

    async def get(self, key: bytes) -> CachedResponse | None: ...

    def put(self, key: bytes, value: CachedResponse) -> None:
        """Store ``value``; must not block (a remote store queues the write)."""
        ...

    def size(self) -> int:
        """Entries held; -1 when the store cannot tell cheaply."""
        ...

    async def flush(self) -> None:
        """Return once every ``put`` made so far can be read by ``get`` (on every gateway
        sharing the store); a store that writes synchronously returns at once."""
        ...

    async def aclose(self) -> None:
        """Finish queued writes, then release the store (the Redis client is its owner's)."""
        ...


class MemoryResponseStore:
    """An LRU of at most ``max_entries`` whose entries expire ``ttl_s`` after being stored.

    NOTE: expiry is lazy (checked on read, and the LRU end is trimmed on write), so memory is
    bounded by ``max_entries`` rather than by a background sweep.
    """

    def __init__(self, *, max_entries: int, ttl_s: float) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[float, CachedResponse]] = OrderedDict()

    async def get(self, key: bytes) -> CachedResponse | None:
        return self.get_now(key)

    def get_now(self, key: bytes) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_s, value = entry
        if expires_s < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: CachedResponse) -> None:
        self._entries[key] = (time.monotonic() + self._ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def size(self) -> int:
        return len(self._entries)

    async def flush(self) -> None:
        return None  # put() stores synchronously

    async def aclose(self) -> None:
        return None
