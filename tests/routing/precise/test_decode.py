"""Recorded KV event payloads decode in both wire layouts to the same events."""

from __future__ import annotations

import msgspec
import pytest

from kvgate.routing.precise.index import ReplicaKVIndex
from kvgate.routing.precise.subscriber import parse_replay_frames
from kvgate.vllm_compat.kv_events import (
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    decode_event_batch,
)

# Published by `kvgate sim --kv-events` (vLLM 0.33's layout): a batch with a stored chain of two
# blocks (the golden sha256 ints of tokens 1..32), an eviction, a CPU-tier block and a reset.
RECORDED_MAP = bytes.fromhex(
    "93cb41da556e4010000094de000ba474797065ab426c6f636b53746f726564ac626c6f636b5f686173686573"
    "92cf137bb037547f4cafcf16d077ad0843c577b1706172656e745f626c6f636b5f68617368c0a9746f6b656e"
    "5f696473dc00200102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20aa626c6f63"
    "6b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c0aa6578747261"
    "5f6b65797392c0c0a967726f75705f69647800b26b765f63616368655f737065635f6b696e64ae66756c6c5f"
    "617474656e74696f6e84a474797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391cf13"
    "7bb037547f4cafa66d656469756da3475055a967726f75705f69647800de0008a474797065ab426c6f636b53"
    "746f726564ac626c6f636b5f686173686573914db1706172656e745f626c6f636b5f68617368cf16d077ad08"
    "43c577a9746f6b656e5f696473dc00102122232425262728292a2b2c2d2e2f30aa626c6f636b5f73697a6510"
    "a76c6f72615f6964c0a66d656469756da3637075a96c6f72615f6e616d65c081a474797065b0416c6c426c6f"
    "636b73436c656172656400"
)
# The same batch in the legacy (vLLM <= 0.10) array-tagged layout.
RECORDED_ARRAY = bytes.fromhex(
    "93cb41da556e401000009497ab426c6f636b53746f72656492cf137bb037547f4cafcf16d077ad0843c577c0"
    "dc00200102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2010c0a347505593ac42"
    "6c6f636b52656d6f76656491cf137bb037547f4cafa347505597ab426c6f636b53746f726564914dcf16d077"
    "ad0843c577dc00102122232425262728292a2b2c2d2e2f3010c0a363707591b0416c6c426c6f636b73436c65"
    "6172656400"
)
BLOCK0, BLOCK1 = 1403909460543360175, 1643945449041937783


@pytest.mark.parametrize("payload", [RECORDED_MAP, RECORDED_ARRAY], ids=["map", "array"])
def test_recorded_payloads_decode_to_the_same_events(payload: bytes) -> None:
    batch = decode_event_batch(payload)
    assert batch.ts == 1767225600.25 and batch.data_parallel_rank == 0
    first, evicted, offloaded, cleared = batch.events
    assert isinstance(first, BlockStored)
    assert first.block_hashes == [BLOCK0, BLOCK1] and first.parent_block_hash is None
    assert first.token_ids == list(range(1, 33)) and first.block_size == 16
    assert first.medium == "GPU"
    assert isinstance(evicted, BlockRemoved) and evicted.block_hashes == [BLOCK0]
    assert isinstance(offloaded, BlockStored) and offloaded.medium == "cpu"
    assert offloaded.parent_block_hash == BLOCK1
    assert isinstance(cleared, AllBlocksCleared)


@pytest.mark.parametrize("payload", [RECORDED_MAP, RECORDED_ARRAY], ids=["map", "array"])
def test_index_state_after_each_event(payload: bytes) -> None:
    idx = ReplicaKVIndex(max_blocks=1000, pending_ttl_s=0)
    events = decode_event_batch(payload).events
    idx.apply(events[:1])
    assert idx.match([BLOCK0, BLOCK1]).gpu_blocks == 2
    idx.apply(events[1:3])
    assert not idx.holds(BLOCK0) and idx.holds(BLOCK1)
    assert idx.num_offloaded_blocks == 1
    idx.apply(events[3:])
    assert idx.num_gpu_blocks == 0 and idx.num_offloaded_blocks == 0


def test_vllm_shaped_payload_with_image_keys_and_omitted_defaults() -> None:
    # As observed from vLLM: map events, optional fields left out, image keys per block.
    raw = [1767225600.5, [
        {"type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None,
         "token_ids": list(range(64)), "block_size": 32, "lora_id": None, "medium": "GPU",
         "lora_name": None, "extra_keys": [None, [["ab" * 32, 5]]], "group_idx": 0,
         "kv_cache_spec_kind": "full_attention", "some_future_field": 1},
        {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU"},
    ], 0]
    batch = decode_event_batch(msgspec.msgpack.encode(raw))
    stored = batch.events[0]
    assert isinstance(stored, BlockStored) and stored.block_size == 32
    assert stored.extra_keys is not None and stored.extra_keys[1] == (["ab" * 32, 5],)


def test_replay_frames_in_both_shapes() -> None:
    seq = (7).to_bytes(8, "big")
    assert parse_replay_frames([b"", seq, b"p"]) is not None  # vLLM's ROUTER: no topic
    item = parse_replay_frames([b"", b"kv-events", seq, b"p"])  # topic first
    assert item is not None and item.seq == 7 and item.payload == b"p"
    assert parse_replay_frames([b"", END_SEQ, b""]) is None
    assert parse_replay_frames([b"", b"", END_SEQ, b""]) is None
    with pytest.raises(ValueError):
        parse_replay_frames([b"", b"x"])
