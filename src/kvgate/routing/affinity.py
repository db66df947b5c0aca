"""Which prompt blocks each deployment served recently: the affinity index.

The index answers one question per request — for each candidate deployment, how many leading
links of this prompt's fingerprint did it serve recently — and learns from each routing
decision. It never sees the engines' caches (the precise mode does, from KV events); TTL and
an LRU bound stand in for the engine's own eviction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kvgate.routing.affinity_core import NO_TICK, AffinityCore, new_core

if TYPE_CHECKING:
    from kvgate.routing.placed_shm import SharedPlacements


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


@runtime_checkable
class ServedTimes(Protocol):
    """An index that can tell when a deployment last served a block (the in-memory one):
    ``prefix_kv_aware`` then counts only links recent enough to have survived the
    replica's own eviction."""

    def served_s(self, deployment_id: str, block_hash: int) -> float | None:
        """The clock second ``deployment_id`` last served the block; None if not tracked."""
        ...


@runtime_checkable
class SharesPlacements(Protocol):
    """An index that gateway workers share (the shared-memory one), with a board for what
    each of them placed on every replica, so their ledgers price KV footprints alike."""

    def shared_placements(self, deployment_ids: Sequence[str],
                          horizon_s: float) -> SharedPlacements | None:
        """The deployments' shared placed-KV counts; None when there is no board for them."""
        ...

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        """:meth:`AffinityIndex.match`, at once (a decision held under the workers' lock
        reads the index again: another worker may have just placed the same prompt)."""
        ...


class MemoryAffinityIndex:
    """Per deployment, block hash -> the second it was last served; per block, who holds it.

    The tables live in a core (:mod:`kvgate.routing.affinity_core`: C where the package was
    built with it); this class gives each deployment a slot (its bit in the holder sets) and
    keeps the clock. A lookup walks the prompt's chain once, intersecting holder sets, instead
    of once per deployment: O(links + deployments) where per-deployment walks cost O(links x
    deployments) (2.6 ms at 256 deployments and 8k-token prompts, measured by ``python -m
    kvgate.bench.routing_cost``).

    Expired entries are swept (front of each LRU order) before a lookup whenever some entry may
    have expired, so every holder a lookup reads is fresh; the sweep runs at most once per tick
    (second), and costs O(deployments + entries expired).
    """

    def __init__(
        self,
        *,
        max_blocks_per_deployment: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        core: AffinityCore | None = None,
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._core = core if core is not None else new_core(max_blocks_per_deployment)
        #: Deployment id -> its slot (bit in the holder sets), given on first sight, never
        #: reused.
        self._slots: dict[str, int] = {}
        #: tuple of deployment ids -> the core's prepared query: the strategy asks with the
        #: same ids every time.
        self._queries: dict[tuple[str, ...], object] = {}
        #: No entry is older than this tick (a lower bound: evictions only raise the truth).
        self._oldest_tick = NO_TICK

    @property
    def core(self) -> AffinityCore:
        return self._core

    def _slot(self, deployment_id: str) -> int:
        slot = self._slots.get(deployment_id)
        if slot is None:
            slot = self._slots[deployment_id] = len(self._slots)
        return slot

    def _query(self, deployment_ids: Sequence[str]) -> object:
        key = tuple(deployment_ids)
        query = self._queries.get(key)
        if query is None:
            if len(self._queries) >= _MAX_CACHED_QUERIES:
                self._queries.clear()
            query = self._queries[key] = self._core.prepare_query(
                [self._slot(deployment_id) for deployment_id in key])
        return query

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return self.match_now(hashes, deployment_ids)

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        oldest_fresh = int(self._clock() - self._ttl_s)
        if oldest_fresh > self._oldest_tick:
            self._oldest_tick = self._core.expire(oldest_fresh)
        return self._core.match(hashes, self._query(deployment_ids))

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        tick = int(self._clock())
        if tick < self._oldest_tick:
            self._oldest_tick = tick
        self._core.record(self._slot(deployment_id), hashes, tick)

    def forget(self, deployment_id: str) -> None:
        slot = self._slots.get(deployment_id)
        if slot is not None:
            self._core.forget(slot)

    def size(self) -> int:
        return self._core.size()

    def served_s(self, deployment_id: str, block_hash: int) -> float | None:
        """When ``deployment_id`` last served the block (whole clock seconds), if tracked."""
        slot = self._slots.get(deployment_id)
        return None if slot is None else self._core.served(slot, block_hash)

    async def flush(self) -> None:
        return None  # record() writes synchronously


#: Distinct deployment lists remembered by ``_query`` (a strategy uses one).
_MAX_CACHED_QUERIES = 64
