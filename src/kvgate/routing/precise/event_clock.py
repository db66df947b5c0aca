"""Affinity without a tokenizer: fingerprint links expired by the replica's own eviction clock.

Without the model's tokenizer the gateway cannot name the blocks a new prompt maps to, so the
events' block hashes (and the token ids they carry) cannot be matched against a request: token
ids cannot be turned back into the text the gateway fingerprints. What the events still give
is the replica's *eviction clock*: how many GPU blocks it has evicted (``BlockRemoved``) and
how many it can hold (the most it held at once). vLLM evicts least recently used blocks first,
so a prefix this gateway last sent to a replica is gone once the replica has evicted about a
cache's worth of blocks since -- however long or short that took. This index is the
approximate one (same fingerprint links, recorded at dispatch, refreshed on every hit) with
that clock in place of a wall-clock TTL, and a reset (``AllBlocksCleared``, a restart, a lost
batch) forgets the replica at once.

NOTE: a cache's worth is an upper bound: blocks held by running requests are not in the LRU
queue, so a busy replica evicts a prefix sooner. The clock errs towards "still cached".
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.routing.precise.index import ReplicaKVIndex


class EventClockedAffinity:
    """Per deployment: fingerprint link -> (index epoch, GPU removals when last sent there)."""

    def __init__(self, *, max_links_per_deployment: int) -> None:
        self._max_links = max_links_per_deployment
        self._links: dict[str, dict[int, tuple[int, int]]] = {}

    def match(self, hashes: Sequence[int], deployment_id: str, index: ReplicaKVIndex) -> int:
        """Leading links still held by the replica according to its eviction clock."""
        links = self._links.get(deployment_id)
        if not links:
            return 0
        epoch, removed = index.epoch, index.removed_gpu_blocks_total
        capacity = max(1, index.peak_gpu_blocks)
        matched = 0
        for link in hashes:
            entry = links.get(link)
            if entry is None or entry[0] != epoch:
                break
            evicted_since = removed - entry[1]
            if evicted_since > 0 and evicted_since >= capacity:
                break
            matched += 1
        return matched

    def record(self, deployment_id: str, hashes: Sequence[int], index: ReplicaKVIndex) -> None:
        links = self._links.setdefault(deployment_id, {})
        stamp = (index.epoch, index.removed_gpu_blocks_total)
        # Children before parents, as in the approximate index: the LRU bound drops tails first.
        for link in reversed(hashes):
            links.pop(link, None)
            links[link] = stamp
        excess = len(links) - self._max_links
        if excess > 0:
            for key in [k for k, _ in zip(links, range(excess), strict=False)]:
                del links[key]

    def size(self, deployment_id: str) -> int:
        return len(self._links.get(deployment_id, ()))
