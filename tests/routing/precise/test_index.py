"""The per-replica block index: reference counts, media, pending blocks, inferred hits."""

from __future__ import annotations

from kvgate.routing.precise.index import PrefixMatch, ReplicaKVIndex
from kvgate.vllm_compat.kv_events import AllBlocksCleared, BlockRemoved, BlockStored


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(hashes: list[int], parent: int | None = None, medium: str | None = "GPU",
           block_size: int = 16) -> BlockStored:
    return BlockStored(block_hashes=list(hashes), parent_block_hash=parent,
                       token_ids=[7] * block_size * len(hashes), block_size=block_size,
                       lora_id=None, medium=medium, lora_name=None)


def removed(hashes: list[int | bytes], medium: str | None = "GPU") -> BlockRemoved:
    return BlockRemoved(block_hashes=list(hashes), medium=medium)


def index(clock: Clock | None = None, max_blocks: int = 1000) -> ReplicaKVIndex:
    return ReplicaKVIndex(max_blocks=max_blocks, pending_ttl_s=5.0, clock=clock or Clock())


def test_leading_run_on_gpu_then_offloaded() -> None:
    idx = index()
    idx.apply([stored([1, 2, 3]), stored([4, 5], parent=3, medium="cpu")])
    assert idx.match([1, 2, 3, 4, 5, 6]) == PrefixMatch(3, 2)
    assert idx.match([9, 1, 2]) == PrefixMatch(0, 0)
    # A gap in the GPU run ends it; the offloaded run continues from there only.
    idx.apply([removed([2])])
    assert idx.match([1, 2, 3]) == PrefixMatch(1, 0)


def test_duplicate_copies_are_reference_counted() -> None:
    idx = index()
    idx.apply([stored([1, 2]), stored([1, 2])])  # two requests computed the same blocks
    idx.apply([removed([2])])
    assert idx.match([1, 2]).gpu_blocks == 2  # one copy of block 2 is still cached
    idx.apply([removed([2])])
    assert idx.match([1, 2]).gpu_blocks == 1


def test_cleared_and_bytes_hashes() -> None:
    idx = index()
    digest = bytes(range(32))
    idx.apply([stored([int.from_bytes(digest[-8:], "big")])])
    idx.apply([removed([digest])])  # raw digests are keyed by their low 64 bits
    assert idx.num_gpu_blocks == 0
    idx.apply([stored([1, 2])])
    epoch = idx.epoch
    idx.apply([AllBlocksCleared()])
    assert idx.num_gpu_blocks == 0 and idx.epoch == epoch + 1


def test_pending_blocks_count_until_confirmed_or_expired() -> None:
    clock = Clock()
    idx = index(clock)
    idx.add_pending([10, 11, 12])
    assert idx.match([10, 11, 12]).gpu_blocks == 3
    idx.apply([stored([10, 11])])  # confirmed by the replica
    assert idx.num_pending_blocks == 1
    clock.now += 6
    assert idx.match([10, 11, 12]).gpu_blocks == 2  # the unconfirmed one expired
    idx.apply([removed([11])])
    assert idx.match([10, 11, 12]).gpu_blocks == 1


def test_parent_of_a_stored_block_proves_the_hit_chain() -> None:
    idx = index()
    # Blocks cached before we listened; a request with chain 1..4 hit 1..3 and stored 4.
    idx.add_pending([1, 2, 3, 4])
    idx.apply([stored([4], parent=3)])
    assert idx.holds(1) and idx.holds(2) and idx.holds(3) and idx.holds(4)
    assert idx.num_pending_blocks == 0
    # A parent outside any pending chain is still known to be held.
    idx.apply([stored([21], parent=20)])
    assert idx.holds(20)


def test_bound_drops_least_recently_stored() -> None:
    idx = index(max_blocks=1000)
    idx.apply([stored(list(range(1500)))])
    assert idx.num_gpu_blocks == 1000
    assert not idx.holds(0) and idx.holds(1499)


def test_offload_chunks_announced_by_their_last_block() -> None:
    # LMCache stores 64-token chunks (4 GPU blocks) and names each by its last block's hash.
    idx = index()
    idx.apply([stored([1, 2])])  # GPU: blocks 0-1 of the prompt
    idx.apply([stored([4, 8], medium="cpu", block_size=64)])  # chunks 0-3 and 4-7
    prompt = list(range(1, 11))  # block keys 1..10
    assert idx.match(prompt) == PrefixMatch(2, 6)  # GPU 0-1, then the rest of chunks 0 and 1
    idx.apply([removed([4], medium="cpu")])
    assert idx.match(prompt) == PrefixMatch(2, 0)
