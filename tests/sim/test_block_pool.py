"""BlockPool: vLLM's free queue, lazy eviction, pinning and capacity."""

from __future__ import annotations

import pytest

from kvgate.sim.block_pool import BlockPool, FreeBlockQueue, KVBlock
from kvgate.sim.events import EventLog
from kvgate.vllm_compat.hashing import BlockHash, to_event_hash
from kvgate.vllm_compat.kv_events import AllBlocksCleared, BlockRemoved


def _hash(i: int) -> BlockHash:
    return BlockHash(i.to_bytes(32, "big"))


def test_free_queue_removes_from_the_middle() -> None:
    blocks = [KVBlock(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert queue.block_ids() == [0, 1, 3, 4] and queue.num_free_blocks == 4
    queue.append(blocks[2])
    assert queue.popleft().block_id == 0
    assert queue.block_ids() == [1, 3, 4, 2]
    with pytest.raises(RuntimeError):
        queue.remove(blocks[0])  # not in the queue any more


def test_null_block_is_reserved() -> None:
    pool = BlockPool(5, EventLog(False))
    assert pool.num_usable_blocks == 4 == pool.num_free_blocks
    blocks = pool.get_new_blocks(4)
    assert 0 not in {b.block_id for b in blocks}
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)  # capacity is never exceeded
    assert pool.usage == 1.0


def test_lazy_eviction_and_removed_event() -> None:
    events = EventLog(True)
    pool = BlockPool(3, events)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, _hash(1), None)
    pool.free_blocks([a, b])
    # Freed but still cached: a hit is possible until the block is reused.
    assert pool.get_cached_block(_hash(1)) is a
    assert events.take() == []
    reused = pool.get_new_blocks(1)
    assert reused == [a] and pool.get_cached_block(_hash(1)) is None
    assert events.take() == [
        BlockRemoved(block_hashes=[to_event_hash(_hash(1))], medium="GPU", group_idx=0)
    ]


def test_lru_order_and_tail_first_free() -> None:
    pool = BlockPool(7, EventLog(False))
    first = pool.get_new_blocks(3)
    second = pool.get_new_blocks(3)
    for i, block in enumerate(first + second):
        pool.cache_block(block, _hash(i), None)
    pool.free_blocks(reversed(first))  # a request frees tail-first
    pool.free_blocks(reversed(second))
    # Least recently freed first; within a request the tail of the chain goes first.
    assert pool.free_queue.block_ids() == [b.block_id for b in [*first[::-1], *second[::-1]]]


def test_touch_pins_a_free_cached_block() -> None:
    pool = BlockPool(3, EventLog(False))
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, _hash(7), None)
    pool.free_blocks([a, b])
    pool.touch([a])
    assert a.ref_cnt == 1 and pool.num_free_blocks == 1
    assert pool.get_new_blocks(1) == [b]  # the pinned block is not handed out
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)
    pool.touch([a])
    pool.free_blocks([a])
    assert a.ref_cnt == 1 and pool.num_free_blocks == 0  # still referenced once


def test_duplicate_hashes_are_kept_until_each_block_is_evicted() -> None:
    pool = BlockPool(3, EventLog(False))
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, _hash(1), None)
    pool.cache_block(b, _hash(1), None)
    pool.free_blocks([a, b])
    pool.get_new_blocks(1)  # evicts a
    assert pool.get_cached_block(_hash(1)) is b


def test_reset_prefix_cache() -> None:
    events = EventLog(True)
    pool = BlockPool(3, events)
    (a,) = pool.get_new_blocks(1)
    pool.cache_block(a, _hash(3), None)
    assert not pool.reset_prefix_cache()  # refused while a request holds a block
    pool.free_blocks([a])
    assert pool.reset_prefix_cache()
    assert pool.get_cached_block(_hash(3)) is None and a.block_hash is None
    assert events.take() == [AllBlocksCleared()]
