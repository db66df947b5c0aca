"""KV event structs against vLLM 0.33's documented wire layouts."""

from __future__ import annotations

import msgspec
import pytest

from kvgate.vllm_compat.kv_events import (
    END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    decode_event_batch,
    encode_event_batch,
    seq_from_bytes,
    seq_to_bytes,
)


def _batch() -> KVEventBatch:
    return KVEventBatch(
        ts=1700000000.5,
        events=[
            BlockStored(block_hashes=[11, 12], parent_block_hash=None, token_ids=list(range(32)),
                        block_size=16, lora_id=None, medium="GPU", lora_name=None,
                        extra_keys=[None, (("abc", -3),)], group_idx=0,
                        kv_cache_spec_kind="full_attention"),
            BlockRemoved(block_hashes=[11], medium="GPU", group_idx=0),
            AllBlocksCleared(),
        ],
        data_parallel_rank=0,
    )


def test_current_layout_is_array_batch_of_tagged_maps() -> None:
    raw = msgspec.msgpack.decode(encode_event_batch(_batch()))
    assert isinstance(raw, list) and len(raw) == 3
    ts, events, rank = raw
    assert ts == 1700000000.5 and rank == 0
    stored, removed, cleared = events
    assert stored == {
        "type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None,
        "token_ids": list(range(32)), "block_size": 16, "lora_id": None, "medium": "GPU",
        "lora_name": None, "extra_keys": [None, [["abc", -3]]], "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }  # fields equal to their default (None) are omitted, as with vLLM's omit_defaults
    assert removed == {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU",
                       "group_idx": 0}
    assert cleared == {"type": "AllBlocksCleared"}


def test_unset_rank_is_still_a_third_element() -> None:
    # msgspec keeps every position of an array-like struct, so consumers always see 3 items.
    batch = KVEventBatch(ts=1.0, events=[AllBlocksCleared()])
    raw = msgspec.msgpack.decode(encode_event_batch(batch))
    assert raw == [1.0, [{"type": "AllBlocksCleared"}], None]


@pytest.mark.parametrize("layout", ["map", "array"])
def test_round_trip(layout: str) -> None:
    decoded = decode_event_batch(encode_event_batch(_batch(), layout))  # type: ignore[arg-type]
    stored = decoded.events[0]
    assert isinstance(stored, BlockStored)
    assert stored.block_hashes == [11, 12] and stored.token_ids == list(range(32))
    assert stored.block_size == 16 and stored.medium == "GPU"
    assert isinstance(decoded.events[1], BlockRemoved)
    assert decoded.events[1].block_hashes == [11]
    assert isinstance(decoded.events[2], AllBlocksCleared)
    assert decoded.data_parallel_rank == 0


def test_legacy_array_layout_from_old_vllm() -> None:
    # vLLM 0.9-era payload: array-like events without medium.
    payload = msgspec.msgpack.encode(
        [2.0, [["BlockStored", [1, 2], 7, [5] * 32, 16, None], ["BlockRemoved", [1]],
               ["AllBlocksCleared"]]]
    )
    decoded = decode_event_batch(payload)
    stored = decoded.events[0]
    assert isinstance(stored, BlockStored)
    assert stored.parent_block_hash == 7 and stored.medium is None
    assert decoded.data_parallel_rank is None


def test_map_shaped_batch_is_accepted() -> None:
    payload = msgspec.msgpack.encode(
        {"ts": 3.0, "events": [{"type": "BlockRemoved", "block_hashes": [b"\x01" * 32],
                                "medium": "CPU"}], "data_parallel_rank": 2}
    )
    decoded = decode_event_batch(payload)
    assert decoded.data_parallel_rank == 2
    removed = decoded.events[0]
    assert isinstance(removed, BlockRemoved) and removed.block_hashes == [b"\x01" * 32]


def test_garbage_is_rejected() -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        decode_event_batch(msgspec.msgpack.encode([1.0, [["Nope"]]]))
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        decode_event_batch(msgspec.msgpack.encode("x"))


def test_sequence_frames() -> None:
    assert seq_to_bytes(5) == b"\x00" * 7 + b"\x05"
    assert seq_from_bytes(seq_to_bytes(2**40)) == 2**40
    assert seq_from_bytes(END_SEQ) == -1
