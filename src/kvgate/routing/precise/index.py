"""What one vLLM replica holds in its prefix cache right now, rebuilt from its KV events.

The replica announces every block it caches (``BlockStored``) and every block it evicts
(``BlockRemoved``, at reallocation), so the set of block hashes it holds can be kept exactly,
per medium: ``GPU`` blocks are prefix-cache hits; blocks in an offload tier (LMCache's
``cpu``, or any other non-GPU medium) cost a transfer back, cheaper than recomputing them.

Three refinements keep the set useful between events:

- **Reference counts.** vLLM caches a block computed concurrently by two requests twice and
  announces (and later evicts) each copy, so a hash stays held until its last copy goes.
- **Pending blocks.** A request's blocks appear in the events only once the replica schedules
  it. Until then (at most ``pending_ttl_s``), the blocks of a request just dispatched count as
  held there, so a burst of one new prefix lands on one replica instead of being spread cold.
- **Hits inferred from parents.** A prefix-cache hit produces no event, but the first block a
  request stores after its hit names the last hit block as its parent: a ``BlockStored`` whose
  parent is unknown proves the parent (and, through a pending chain, its ancestors) is held.
  This is how blocks cached before the gateway started listening are learned.

With ``token_blocks`` keying the index does not trust the replica's hashes at all: every stored
block is re-keyed by ``token_block_key`` over its parent's key, its token ids and its extra keys
(all carried by the event), so a gateway that can tokenize but not reproduce the replica's hash
(``xxhash`` with vLLM's secret random seed) still matches exactly.

Lookups cost O(matched blocks); the sets are bounded (LRU) as a guard against lost removals.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from kvgate.vllm_compat.hashing import to_event_hash
from kvgate.vllm_compat.kv_events import (
    AllBlocksCleared,
    AnyKVEvent,
    BlockRemoved,
    BlockStored,
    ExternalBlockHash,
)

#: Media vLLM reports for its own GPU pool; None (older engines) means the GPU as well.
_GPU_MEDIA = frozenset({None, "GPU", "gpu", "cuda", "CUDA"})


def event_key(block_hash: ExternalBlockHash) -> int:
    """The index key of an event's hash: the 64-bit int, also for raw-digest (bytes) events."""
    return block_hash if isinstance(block_hash, int) else to_event_hash(block_hash)


def is_gpu_medium(medium: str | None) -> bool:
    return medium in _GPU_MEDIA


def token_block_key(parent: int, token_ids: Sequence[int], extra_keys: Any) -> int:
    """A block's identity from its content alone: XXH3-64 of its token ids and its (untagged,
    event-form) extra keys, seeded with the parent block's key (0 for the first block)."""
    data = array("q", token_ids).tobytes()
    if extra_keys:
        data += orjson.dumps(extra_keys)
    return xxhash.xxh3_64_intdigest(data, seed=parent)


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """Leading blocks of a prompt a replica holds: on the GPU, then in an offload tier."""

    gpu_blocks: int
    offloaded_blocks: int


NO_MATCH = PrefixMatch(0, 0)


class ReplicaKVIndex:
    """Block hashes one replica holds, by medium, with pending blocks of recent dispatches."""

    def __init__(
        self,
        *,
        max_blocks: int,
        pending_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        token_blocks: bool = False,
    ) -> None:
        self._max_blocks = max_blocks
        #: Replica hash -> token-block key, when keying by content (``token_blocks``).
        self._token_keys: dict[int, int] | None = {} if token_blocks else None
        self._pending_ttl_s = pending_ttl_s
        self._clock = clock
        # NOTE: plain dicts in insertion order double as LRU queues (re-inserting moves a key
        # to the end), about half the memory of OrderedDict nodes.
        self._gpu: dict[int, int] = {}
        self._offloaded: dict[int, int] = {}
        # hash -> (deadline, the dispatched chain it belongs to, its position in that chain).
        self._pending: dict[int, tuple[float, tuple[int, ...], int]] = {}
        #: Block counts moved by events, for the strategy's eviction clock and for stats.
        self.stored_blocks_total = 0
        self.removed_gpu_blocks_total = 0
        #: GPU removals of blocks this index held (a removal of an unknown block is not).
        self.removed_known_gpu_blocks_total = 0
        self.peak_gpu_blocks = 0
        #: Bumped by every ``clear``: what was learned before it no longer describes the replica.
        self.epoch = 0
        # Block sizes seen in events: the GPU's, and the offload tier's chunk (in GPU blocks).
        self._gpu_block_size = 0
        self._offload_span_blocks = 1

    # -- reading ----------------------------------------------------------------------------

    @property
    def num_gpu_blocks(self) -> int:
        return len(self._gpu)

    @property
    def num_offloaded_blocks(self) -> int:
        return len(self._offloaded)

    @property
    def num_pending_blocks(self) -> int:
        return len(self._pending)

    def holds(self, key: int) -> bool:
        """Whether the GPU holds ``key`` (pending blocks not counted)."""
        return key in self._gpu

    def match(self, keys: Sequence[int]) -> PrefixMatch:
        """How many leading ``keys`` are on the GPU (or pending), then how many more offloaded.

        vLLM takes the leading run of GPU hits, and an offload connector continues it from
        where the GPU run stops, so that is the order here too.
        """
        gpu, pending = self._gpu, self._pending
        now = -1.0
        num_gpu = 0
        for key in keys:
            if key not in gpu:
                entry = pending.get(key)
                if entry is None:
                    break
                if now < 0:
                    now = self._clock()
                if entry[0] < now:
                    break
            num_gpu += 1
        offloaded = self._offloaded
        num_offloaded = 0
        if offloaded:
            # An offload tier may announce whole chunks (LMCache: 256 tokens) under the hash of
            # the chunk's last block; chunks are aligned to the prompt's start.
            span = self._offload_span_blocks
            position = num_gpu
            while position < len(keys):
                chunk_end = (position // span + 1) * span - 1
                if chunk_end >= len(keys) or keys[chunk_end] not in offloaded:
                    break
                position = chunk_end + 1
            num_offloaded = position - num_gpu
        return PrefixMatch(num_gpu, num_offloaded) if num_gpu or num_offloaded else NO_MATCH

    # -- dispatches -------------------------------------------------------------------------

    def add_pending(self, keys: Sequence[int]) -> None:
        """A request with these block keys was just sent here; count them held for a while."""
        if not keys or self._pending_ttl_s <= 0:
            return
        now = self._clock()
        pending = self._pending
        # Deadlines grow with insertion order (one TTL for all), so expired entries are at the
        # front: drop them first, O(expired).
        while pending:
            first = next(iter(pending))
            if pending[first][0] >= now:
                break
            del pending[first]
        deadline = now + self._pending_ttl_s
        chain = tuple(keys)
        for position, key in enumerate(chain):
            if key in self._gpu:
                continue
            pending.pop(key, None)
            pending[key] = (deadline, chain, position)
        excess = len(pending) - self._max_blocks
        if excess > 0:
            for key in [k for k, _ in zip(pending, range(excess), strict=False)]:
                del pending[key]

    # -- events -----------------------------------------------------------------------------

    def apply(self, events: Iterable[AnyKVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(event)
            elif isinstance(event, BlockRemoved):
                self._removed(event)
            elif isinstance(event, AllBlocksCleared):
                self.clear()

    def clear(self) -> None:
        """Forget everything (the replica reset its cache, restarted, or we lost track)."""
        self._gpu.clear()
        self._offloaded.clear()
        self._pending.clear()
        self.epoch += 1

    def _stored(self, event: BlockStored) -> None:
        self.stored_blocks_total += len(event.block_hashes)
        keys = (self._keys_by_content(event) if self._token_keys is not None
                else [event_key(h) for h in event.block_hashes])
        if keys is None:
            return
        if not is_gpu_medium(event.medium):
            if self._gpu_block_size and event.block_size > self._gpu_block_size:
                self._offload_span_blocks = event.block_size // self._gpu_block_size
            _add_all(self._offloaded, keys, self._max_blocks)
            return
        self._gpu_block_size = event.block_size
        gpu = self._gpu
        parent = event.parent_block_hash
        if parent is not None:
            parent_key: int | None = event_key(parent)
            if self._token_keys is not None:
                parent_key = self._token_keys.get(event_key(parent))
            if parent_key is not None and parent_key not in gpu:
                self._infer_held(parent_key)
        pending = self._pending
        for key in keys:
            pending.pop(key, None)
        _add_all(gpu, keys, self._max_blocks)
        if len(gpu) > self.peak_gpu_blocks:
            self.peak_gpu_blocks = len(gpu)

    def _keys_by_content(self, event: BlockStored) -> list[int] | None:
        """Token-block keys of the event's blocks; None when its parent was never seen (the
        chain's content before it is unknown, so its blocks cannot be keyed)."""
        token_keys = self._token_keys
        assert token_keys is not None
        parent = 0
        if event.parent_block_hash is not None:
            known = token_keys.get(event_key(event.parent_block_hash))
            if known is None:
                return None
            parent = known
        size = event.block_size
        extras = event.extra_keys or ()
        keys = []
        for i, block_hash in enumerate(event.block_hashes):
            extra = extras[i] if i < len(extras) else None
            parent = token_block_key(parent, event.token_ids[i * size:(i + 1) * size], extra)
            token_keys[event_key(block_hash)] = parent
            keys.append(parent)
        _trim(token_keys, 2 * self._max_blocks)
        return keys

    def _infer_held(self, key: int) -> None:
        """``key`` is the parent of a newly stored block, so the replica holds it."""
        entry = self._pending.get(key)
        inferred = [key] if entry is None else list(entry[1][: entry[2] + 1])
        gpu, pending = self._gpu, self._pending
        for ancestor in inferred:
            pending.pop(ancestor, None)
            if ancestor not in gpu:
                gpu[ancestor] = 1
        _trim(gpu, self._max_blocks)

    def _removed(self, event: BlockRemoved) -> None:
        target = self._gpu if is_gpu_medium(event.medium) else self._offloaded
        token_keys = self._token_keys
        for block_hash in event.block_hashes:
            key = event_key(block_hash)
            if token_keys is not None:
                key = token_keys.get(key, -1)
            count = target.get(key)
            if target is self._gpu:
                self.removed_gpu_blocks_total += 1
                self._pending.pop(key, None)
            if count is None:
                continue
            if target is self._gpu:
                self.removed_known_gpu_blocks_total += 1
            if count > 1:
                target[key] = count - 1
            else:
                del target[key]


def _add_all(blocks: dict[int, int], keys: Sequence[int], max_blocks: int) -> None:
    for key in keys:
        count = blocks.pop(key, 0)
        blocks[key] = count + 1  # (re)inserted last: most recently stored
    _trim(blocks, max_blocks)


def _trim(blocks: dict[int, int], max_blocks: int) -> None:
    excess = len(blocks) - max_blocks
    if excess > 0:
        for key in [k for k, _ in zip(blocks, range(excess), strict=False)]:
            del blocks[key]
