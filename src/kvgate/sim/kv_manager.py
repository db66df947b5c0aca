"""Per-request KV bookkeeping on top of the block pool (vLLM's KVCacheManager, one group).

- `find_prefix_hit`: the leading run of the request's block hashes cached on the GPU, then the
  run that continues in the CPU tier; never the whole prompt (at least one token is recomputed,
  so the hit is capped at `num_tokens - 1`).
- `allocate_slots`: blocks for the tokens about to be computed, refusing (False) when the pool
  cannot supply them -- the scheduler then preempts or leaves the request waiting. Blocks that
  become full are hashed and cached at once (like vLLM, at schedule time), decode blocks too.
- `free`: release a request's blocks tail-first, so the tail is evicted before the shared head.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvgate.sim.block_pool import BlockMeta, BlockPool, KVBlock
from kvgate.sim.events import EventLog
from kvgate.sim.offload import CpuOffloadTier
from kvgate.sim.request import EngineRequest
from kvgate.vllm_compat.hashing import (
    BlockHasher,
    block_extra_keys,
    to_event_extra_keys,
    to_event_hash,
)
from kvgate.vllm_compat.kv_events import (
    KV_CACHE_SPEC_FULL_ATTENTION,
    MEDIUM_GPU,
    BlockStored,
)


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """Where a new request's prefix is already held."""

    gpu_blocks: list[KVBlock]
    num_offload_blocks: int

    @property
    def num_blocks(self) -> int:
        return len(self.gpu_blocks) + self.num_offload_blocks


NO_HIT = PrefixHit([], 0)


class KVCacheManager:
    """Allocates, caches and frees the blocks of requests."""

    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        hasher: BlockHasher,
        events: EventLog,
        offload: CpuOffloadTier | None = None,
    ) -> None:
        self.pool = pool
        self.block_size = block_size
        self.hasher = hasher
        self.offload = offload
        self._events = events
        # Block contents are only needed to re-describe a block in a CPU-tier event.
        self._keep_meta = events.enabled and offload is not None

    def update_block_hashes(self, request: EngineRequest) -> None:
        """Extend `request.block_hashes` to every full block of its current tokens."""
        num_hashed = len(request.block_hashes)
        if (num_hashed + 1) * self.block_size > request.num_tokens:
            return
        request.block_hashes.extend(
            self.hasher.hash_blocks(
                request.all_token_ids,
                self.block_size,
                start_block=num_hashed,
                parent=request.block_hashes[-1] if num_hashed else None,
                mm_items=request.mm_items,
                lora=request.lora,
                cache_salt=request.cache_salt,
            )
        )

    def find_prefix_hit(self, request: EngineRequest) -> PrefixHit:
        if not self.pool.enable_caching:
            return NO_HIT
        self.update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        gpu_blocks = self.pool.longest_cached_prefix(request.block_hashes, max_blocks)
        num_offload = 0
        if self.offload is not None:
            num_offload = self.offload.count_prefix_hits(
                request.block_hashes, len(gpu_blocks), max_blocks
            )
        return PrefixHit(gpu_blocks, num_offload)

    def allocate_slots(
        self, request: EngineRequest, num_new_tokens: int, hit: PrefixHit = NO_HIT
    ) -> bool:
        """Reserve blocks for `num_new_tokens` more tokens (after `hit`, for a new request)."""
        num_computed = request.num_computed_tokens + hit.num_blocks * self.block_size
        num_total = num_computed + num_new_tokens
        num_required = -(-num_total // self.block_size)
        if hit is NO_HIT and num_required <= len(request.blocks):
            # Fast path, most decode steps: the token fits in the request's last block.
            if self.pool.enable_caching:
                num_full = min(num_total, request.num_tokens) // self.block_size
                self._cache_full_blocks(request, num_full)
            return True
        num_new_blocks = max(0, num_required - len(request.blocks) - len(hit.gpu_blocks))
        # Hit blocks sitting in the free queue stop being allocatable once we pin them.
        num_pinned_free = sum(1 for block in hit.gpu_blocks if block.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_pinned_free:
            return False
        if hit.gpu_blocks:
            self.pool.touch(hit.gpu_blocks)
            request.blocks.extend(hit.gpu_blocks)
            request.num_cached_blocks += len(hit.gpu_blocks)
        if hit.num_offload_blocks and self.offload is not None:
            # NOTE: before taking new blocks: their evictions spill into the CPU tier and may
            # push out the very blocks this request is about to load from it.
            first = len(hit.gpu_blocks)
            self.offload.load(request.block_hashes[first:first + hit.num_offload_blocks])
        request.blocks.extend(self.pool.get_new_blocks(num_new_blocks))
        if self.pool.enable_caching:
            self._cache_full_blocks(request, min(num_total, request.num_tokens) // self.block_size)
        return True

    def free(self, request: EngineRequest) -> None:
        self.pool.free_blocks(reversed(request.blocks))
        request.blocks = []
        request.num_cached_blocks = 0

    def _cache_full_blocks(self, request: EngineRequest, num_full_blocks: int) -> None:
        first = request.num_cached_blocks
        if num_full_blocks <= first:
            return
        self.update_block_hashes(request)
        size = self.block_size
        hashes = request.block_hashes
        record = self._events.enabled
        event_keys = []
        for index in range(first, num_full_blocks):
            meta = None
            if record:
                keys = to_event_extra_keys(
                    block_extra_keys(
                        index * size, (index + 1) * size,
                        request.mm_items, request.lora, request.cache_salt,
                    )
                )
                event_keys.append(keys)
                if self._keep_meta:
                    meta = BlockMeta(
                        parent_hash=hashes[index - 1] if index else None,
                        token_ids=tuple(request.all_token_ids[index * size:(index + 1) * size]),
                        event_extra_keys=keys,
                    )
            self.pool.cache_block(request.blocks[index], hashes[index], meta)
        request.num_cached_blocks = num_full_blocks
        if record:
            self._events.record(
                BlockStored(
                    block_hashes=[to_event_hash(h) for h in hashes[first:num_full_blocks]],
                    parent_block_hash=to_event_hash(hashes[first - 1]) if first else None,
                    token_ids=request.all_token_ids[first * size:num_full_blocks * size],
                    block_size=size,
                    lora_id=None,
                    medium=MEDIUM_GPU,
                    lora_name=request.lora.name if request.lora else None,
                    extra_keys=event_keys,
                    group_idx=0,
                    kv_cache_spec_kind=KV_CACHE_SPEC_FULL_ATTENTION,
                )
            )
