"""GPU KV blocks with vLLM's prefix-cache semantics (vllm/v1/core/block_pool.py, 0.33.0).

- A fixed number of blocks; block 0 is the null block, so `num_gpu_blocks - 1` are usable.
- Only full blocks are cached, keyed by their chained hash; a block stays cached after its
  requests free it and sits in the free queue as an eviction candidate.
- The free queue is LRU: blocks are appended when their reference count drops to 0 (a finished
  request frees its blocks tail-first, so the tail of a chain is evicted before its head) and
  taken from the front. Eviction is lazy: a cached block loses its hash -- and a BlockRemoved
  event is recorded -- only when it is popped for reuse.
- A hit on a free cached block removes it from the queue (O(1)) so it is pinned while used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.sim.events import EventLog
from kvgate.vllm_compat.hashing import BlockHash, to_event_hash
from kvgate.vllm_compat.kv_events import MEDIUM_GPU, AllBlocksCleared, BlockRemoved


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """What a cached block held, kept only when KV events need to describe it again later."""

    parent_hash: BlockHash | None
    token_ids: tuple[int, ...]
    event_extra_keys: tuple[Any, ...] | None


class KVBlock:
    """One KV-cache block's metadata; the links are owned by FreeBlockQueue."""

    __slots__ = ("block_hash", "block_id", "meta", "next_free", "prev_free", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        self.meta: BlockMeta | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None


class FreeBlockQueue:
    """Doubly linked list of free blocks threaded through the blocks themselves.

    A list would make removing a hit block from the middle O(n); `collections.deque` cannot
    remove an arbitrary element in O(1) either. Sentinels at both ends remove edge cases.
    """

    def __init__(self, blocks: Sequence[KVBlock]) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVBlock:
        block = self._head.next_free
        if block is None or block is self._tail:
            raise ValueError("no free blocks")
        self.remove(block)
        return block

    def remove(self, block: KVBlock) -> None:
        prev_block, next_block = block.prev_free, block.next_free
        if prev_block is None or next_block is None:
            raise RuntimeError(f"block {block.block_id} is not in the free queue")
        prev_block.next_free = next_block
        next_block.prev_free = prev_block
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def append(self, block: KVBlock) -> None:
        last = self._tail.prev_free
        assert last is not None  # the sentinel always has a predecessor
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free_blocks += 1

    def block_ids(self) -> list[int]:
        """Free block ids in eviction order (front first); for tests and debugging."""
        ids: list[int] = []
        block = self._head.next_free
        while block is not None and block is not self._tail:
            ids.append(block.block_id)
            block = block.next_free
        return ids


EvictCallback = Callable[[BlockHash, BlockMeta | None], None]


class BlockPool:
    """Allocation, caching, hit lookup and lazy eviction of GPU blocks."""

    def __init__(
        self,
        num_gpu_blocks: int,
        events: EventLog,
        *,
        enable_caching: bool = True,
        on_evict: EvictCallback | None = None,
    ) -> None:
        if num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be >= 2 (block 0 is the null block)")
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self._events = events
        self._on_evict = on_evict
        self.blocks = [KVBlock(i) for i in range(num_gpu_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        # vLLM reserves block 0 as a placeholder that is never allocated or cached.
        self.null_block = self.free_queue.popleft()
        # NOTE: identical blocks computed concurrently by two requests are both kept (as vLLM
        # does, so block tables stay append-only); a hit returns the first.
        self.cached: dict[BlockHash, dict[int, KVBlock]] = {}

    @property
    def num_usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free_blocks

    @property
    def usage(self) -> float:
        """vllm:kv_cache_usage_perc: share of usable blocks referenced by a request (0-1)."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        same_hash = self.cached.get(block_hash)
        return next(iter(same_hash.values())) if same_hash else None

    def longest_cached_prefix(
        self, block_hashes: Sequence[BlockHash], max_blocks: int
    ) -> list[KVBlock]:
        """Cached blocks for the leading run of block_hashes[:max_blocks]; stops at a miss."""
        hits: list[KVBlock] = []
        for index in range(min(max_blocks, len(block_hashes))):
            block = self.get_cached_block(block_hashes[index])
            if block is None:
                break
            hits.append(block)
        return hits

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on hit blocks, pinning free ones by pulling them off the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def get_new_blocks(self, num_blocks: int) -> list[KVBlock]:
        """Pop `num_blocks` from the front of the free queue, evicting cached ones lazily."""
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot allocate {num_blocks} of {self.num_free_blocks} free blocks")
        new_blocks = []
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            new_blocks.append(block)
        return new_blocks

    def cache_block(self, block: KVBlock, block_hash: BlockHash, meta: BlockMeta | None) -> None:
        """Register a newly full block under its hash (the caller records BlockStored)."""
        assert block.block_hash is None, "block already cached"
        block.block_hash = block_hash
        block.meta = meta
        self.cached.setdefault(block_hash, {})[block.block_id] = block

    def free_blocks(self, ordered_blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each; blocks reaching 0 join the queue in the given order.

        Callers pass a request's blocks tail-first so the tail is evicted first.
        """
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0 and block is not self.null_block:
                self.free_queue.append(block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any request holds a block."""
        if self.num_free_blocks != self.num_usable_blocks:
            return False
        for same_hash in self.cached.values():
            for block in same_hash.values():
                block.block_hash = None
                block.meta = None
        self.cached.clear()
        self._events.record(AllBlocksCleared())
        return True

    def _evict(self, block: KVBlock) -> None:
        block_hash = block.block_hash
        assert block_hash is not None
        same_hash = self.cached.get(block_hash)
        if same_hash is not None:
            same_hash.pop(block.block_id, None)
            if not same_hash:
                del self.cached[block_hash]
        if self._events.enabled:
            self._events.record(
                BlockRemoved(
                    block_hashes=[to_event_hash(block_hash)], medium=MEDIUM_GPU, group_idx=0
                )
            )
        if self._on_evict is not None:
            self._on_evict(block_hash, block.meta)
        block.block_hash = None
        block.meta = None
