"""Which prompt blocks each deployment served recently: the affinity index.

The index answers one question per request — for each candidate deployment, how many leading
links of this prompt's fingerprint did it serve recently — and learns from each routing
decision. It never sees the engines' caches (the precise mode does, from KV events); TTL and
an LRU bound stand in for the engine's own eviction.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from itertools import accumulate, compress, islice, repeat, takewhile
from operator import and_, is_, neg, not_
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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

    Two structures, kept in step by ``record``, eviction, expiry and ``forget``:

    * ``_blocks``: one insertion-ordered dict per deployment, block key -> tick (the second it
      was last served there). NOTE: a plain dict instead of ``OrderedDict``: re-inserting a key
      moves it to the end, so iteration order is LRU order (and, ticks never decreasing, oldest
      first), and a dict entry costs about half an OrderedDict node.
    * ``_holders``: block key -> bitmask of the deployments (by slot) that hold it. A lookup
      walks the prompt's chain once, ANDing masks, instead of once per deployment: O(links +
      deployments) where per-deployment walks cost O(links x deployments) (2.6 ms at 256
      deployments and 8k-token prompts, measured by ``python -m kvgate.bench.routing_cost``).

    Expired entries are swept (front of each LRU dict) before a lookup whenever some entry may
    have expired, so every bit in ``_holders`` is fresh when a lookup reads it; the sweep runs
    at most once per tick (second), and costs O(deployments + entries expired).

    NOTE: memory trade-off: the holder masks add one dict entry per *distinct* block (key
    objects are shared), about 40 bytes: with no block shared between deployments, 1 million
    entries take about 120 MB instead of 74 MB; a prefix shared by N deployments costs
    1/N of that per entry. Recording a block new to a deployment costs one more dict update.
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
        self._holders: dict[int, int] = {}
        #: Deployment id -> its bit in ``_holders`` masks, given on first sight, never reused.
        self._slots: dict[str, int] = {}
        #: tuple of deployment ids -> (their slots, OR of their bits): the strategy asks with
        #: the same ids every time.
        self._queries: dict[tuple[str, ...], tuple[list[int], int]] = {}
        #: No entry is older than this tick (a lower bound: evictions only raise the truth).
        self._oldest_tick = _NO_TICK
        self._tick_value = -1
        self._tick_object: int = -1

    def _now_tick(self) -> int:
        now = int(self._clock())
        if now != self._tick_value:
            # One int object per second, shared by every entry written in that second.
            self._tick_value = now
            self._tick_object = now
        return self._tick_object

    def _slot(self, deployment_id: str) -> int:
        slot = self._slots.get(deployment_id)
        if slot is None:
            slot = self._slots[deployment_id] = len(self._slots)
        return slot

    def _query(self, deployment_ids: Sequence[str]) -> tuple[list[int], int]:
        key = tuple(deployment_ids)
        query = self._queries.get(key)
        if query is None:
            if len(self._queries) >= _MAX_CACHED_QUERIES:
                self._queries.clear()
            slots = [self._slot(deployment_id) for deployment_id in key]
            mask = 0
            for slot in slots:
                mask |= 1 << slot
            query = self._queries[key] = (slots, mask)
        return query

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return self.match_now(hashes, deployment_ids)

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        oldest_fresh = int(self._clock() - self._ttl_s)
        if oldest_fresh > self._oldest_tick:
            self._expire(oldest_fresh)
        slots, query_mask = self._query(deployment_ids)
        # alive[k]: the queried deployments holding links 0..k-1 (alive[0]: all of them), by C
        # loops that stop at the first empty mask. The sets only shrink, so the masks (as ints)
        # never grow and equal masks form runs, found by bisection.
        alive = list(takewhile(bool, accumulate(map(self._holders.get, hashes, repeat(0)),
                                                and_, initial=query_mask)))
        if not alive or alive[-1] == alive[0]:
            # Nobody, or every queried deployment alike (cold prompts; a shared prefix only).
            return [len(alive) - 1 if alive else 0] * len(slots)
        runs = []  # (mask, links matched by the deployments whose last run this is)
        start = 0
        while start < len(alive):
            end = bisect_right(alive, -alive[start], lo=start, key=neg)
            runs.append((alive[start], end - 1))
            start = end
        by_slot = _matched_by_slot(runs, len(self._slots))
        return [by_slot[slot] for slot in slots]

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        blocks = self._blocks.get(deployment_id)
        if blocks is None:
            blocks = self._blocks[deployment_id] = {}
        tick = self._now_tick()
        if tick < self._oldest_tick:
            self._oldest_tick = tick
        # Newest-last in LRU order, children before parents: when the bound evicts, a prompt's
        # tail goes before its head, so what remains is still a leading run (as in vLLM, which
        # frees a finished request's blocks tail first).
        keys = list(reversed(hashes))
        previous = list(map(blocks.pop, keys, repeat(None)))
        num_kept = len(blocks)
        blocks.update(zip(keys, repeat(tick)))
        if len(blocks) - num_kept != len(keys):
            # A key listed twice (only arbitrary lists, not chains): it takes the place of its
            # first occurrence in ``hashes``, as re-inserting link by link would.
            unique = list(reversed(dict.fromkeys(hashes)))
            deque(map(blocks.pop, unique), maxlen=0)
            blocks.update(zip(unique, repeat(tick)))
        new_keys = list(compress(keys, map(is_, previous, repeat(None))))
        if new_keys:
            holders, bit = self._holders, 1 << self._slot(deployment_id)
            masks = map(bit.__or__, map(holders.get, new_keys, repeat(0)))
            holders.update(zip(new_keys, masks, strict=True))
        excess = len(blocks) - self._max_blocks
        if excess > 0:
            self._drop(deployment_id, list(islice(blocks, excess)))

    def _drop(self, deployment_id: str, keys: Sequence[int]) -> None:
        """Remove ``keys`` from the deployment's LRU dict and its bit from their masks (C loops:
        a cold long prompt on a full deployment evicts thousands of keys)."""
        blocks, holders = self._blocks[deployment_id], self._holders
        deque(map(blocks.__delitem__, keys), maxlen=0)
        clear = ~(1 << self._slots[deployment_id])
        masks = list(map(clear.__and__, map(holders.__getitem__, keys)))
        holders.update(zip(compress(keys, masks), filter(None, masks), strict=True))
        deque(map(holders.__delitem__, compress(keys, map(not_, masks))), maxlen=0)

    def _expire(self, oldest_fresh: int) -> None:
        """Drop every entry last served before ``oldest_fresh`` (LRU fronts: oldest first)."""
        oldest_left = _NO_TICK
        for deployment_id, blocks in self._blocks.items():
            stale = []
            for key, tick in blocks.items():
                if tick >= oldest_fresh:
                    oldest_left = min(oldest_left, tick)
                    break
                stale.append(key)
            if stale:
                self._drop(deployment_id, stale)
        self._oldest_tick = oldest_left

    def forget(self, deployment_id: str) -> None:
        blocks = self._blocks.get(deployment_id)
        if blocks is not None:
            self._drop(deployment_id, list(blocks))
            del self._blocks[deployment_id]

    def size(self) -> int:
        return sum(len(b) for b in self._blocks.values())

    def served_s(self, deployment_id: str, block_hash: int) -> float | None:
        """When ``deployment_id`` last served the block (whole clock seconds), if tracked."""
        blocks = self._blocks.get(deployment_id)
        return None if blocks is None else blocks.get(block_hash)

    async def flush(self) -> None:
        return None  # record() writes synchronously


def _matched_by_slot(runs: list[tuple[int, int]], num_slots: int) -> list[int]:
    """Leading links matched per slot, from the runs of the shrinking alive masks.

    A slot's count is where the last run holding it ends. Summing each run's mask spread to
    one byte per slot (via its binary digits, in C) counts the runs holding each slot; a slot
    in ``r`` runs matched ``ends[r]`` links.
    """
    if len(runs) > 255:  # a byte per slot would overflow: more runs than happen in practice
        by_slot = [0] * num_slots
        for mask, end in runs:
            for slot in range(num_slots):
                if mask >> slot & 1:
                    by_slot[slot] = end
        return by_slot
    ends = [0, *(end for _, end in runs)]
    spread_sum = sum(int.from_bytes(format(mask, "b").encode().translate(_DIGIT_TO_BYTE), "big")
                     for mask, _ in runs)
    return list(map(ends.__getitem__, spread_sum.to_bytes(num_slots, "little")))


#: Greater than any tick: no entries.
_NO_TICK = 1 << 62
#: Distinct deployment lists remembered by ``_query`` (a strategy uses one).
_MAX_CACHED_QUERIES = 64
#: b"0" -> 0, b"1" -> 1: binary digits to one byte per bit.
_DIGIT_TO_BYTE = bytes.maketrans(b"01", b"\x00\x01")
