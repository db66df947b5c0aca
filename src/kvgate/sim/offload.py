"""An LMCache-like CPU tier below the GPU prefix cache.

When the GPU pool evicts a cached block, its hash spills into a CPU pool of fixed size (LRU).
A request whose prefix continues past its GPU hit into blocks held on the CPU loads them back
instead of recomputing them: the engine charges `Profile.block_load_s` per block (the PCIe
transfer) plus a fixed latency, which is far less than prefilling the same tokens.

NOTE: LMCache itself writes every prefilled chunk to the CPU (write-through, 256-token chunks);
spilling on eviction keeps the same hit behaviour for prefixes that outlive the GPU copy while
using less CPU space. The D2H copy is overlapped with compute in practice and is not charged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvgate.sim.block_pool import BlockMeta
from kvgate.sim.events import EventLog
from kvgate.vllm_compat.hashing import BlockHash, to_event_hash
from kvgate.vllm_compat.kv_events import (
    KV_CACHE_SPEC_FULL_ATTENTION,
    MEDIUM_CPU,
    BlockRemoved,
    BlockStored,
)


class CpuOffloadTier:
    """Block hashes resident in host memory, least recently used first."""

    def __init__(self, num_blocks: int, block_size: int, events: EventLog) -> None:
        if num_blocks <= 0:
            raise ValueError("an offload tier needs at least one block")
        self.num_blocks = num_blocks
        self._block_size = block_size
        self._events = events
        self._lru: OrderedDict[BlockHash, BlockMeta | None] = OrderedDict()
        self.num_stored_blocks_total = 0
        self.num_loaded_blocks_total = 0

    def __contains__(self, block_hash: BlockHash) -> bool:
        return block_hash in self._lru

    @property
    def usage(self) -> float:
        return len(self._lru) / self.num_blocks

    def store(self, block_hash: BlockHash, meta: BlockMeta | None) -> None:
        """Spill one evicted GPU block (the pool's eviction callback)."""
        if block_hash in self._lru:
            self._lru.move_to_end(block_hash)
            return
        if len(self._lru) >= self.num_blocks:
            dropped, _ = self._lru.popitem(last=False)
            if self._events.enabled:
                self._events.record(
                    BlockRemoved(block_hashes=[to_event_hash(dropped)], medium=MEDIUM_CPU)
                )
        self._lru[block_hash] = meta
        self.num_stored_blocks_total += 1
        if self._events.enabled and meta is not None:
            self._events.record(self._stored_event(block_hash, meta))

    def count_prefix_hits(self, block_hashes: Sequence[BlockHash], start: int, stop: int) -> int:
        """How many of block_hashes[start:stop] are resident, counting until the first miss."""
        count = 0
        for index in range(start, stop):
            if block_hashes[index] not in self._lru:
                break
            count += 1
        return count

    def load(self, block_hashes: Sequence[BlockHash]) -> None:
        """Mark blocks as read back to the GPU (they stay resident here, most recently used)."""
        for block_hash in block_hashes:
            self._lru.move_to_end(block_hash)
        self.num_loaded_blocks_total += len(block_hashes)

    def _stored_event(self, block_hash: BlockHash, meta: BlockMeta) -> BlockStored:
        return BlockStored(
            block_hashes=[to_event_hash(block_hash)],
            parent_block_hash=to_event_hash(meta.parent_hash) if meta.parent_hash else None,
            token_ids=list(meta.token_ids),
            block_size=self._block_size,
            lora_id=None,
            medium=MEDIUM_CPU,
            lora_name=None,
            extra_keys=[meta.event_extra_keys],
            group_idx=0,
            kv_cache_spec_kind=KV_CACHE_SPEC_FULL_ATTENTION,
        )
