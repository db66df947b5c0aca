"""vLLM KV-cache events: structs and msgpack wire layouts (vllm/distributed/kv_events.py, 0.33.0).

Transport (ZMQ): a PUB socket sends 3 frames `[topic, seq (u64 big-endian), payload]`, one batch
per engine step that produced events. A ROUTER replay socket answers a DEALER's
`[b"", start_seq (8 bytes BE)]` with `[b"", topic, seq, payload]` for every buffered batch with
seq >= start_seq, then the end marker `[b"", b"", END_SEQ, b""]`.

Payload layouts:

- current (vLLM >= ~0.11, checked against 0.33.0 and observed from 0.32): the batch is an *array*
  `[ts, [events...], data_parallel_rank]` and each event a *map* tagged by `"type"`, with fields
  left out when they equal their default (`omit_defaults`);
- legacy (vLLM <= ~0.10): events are arrays too: `["BlockStored", hashes, parent, token_ids,
  block_size, lora_id, medium, ...]`, `["BlockRemoved", hashes, medium]`, `["AllBlocksCleared"]`.

`decode_event_batch` accepts either, and also a map-shaped batch, and always returns the current
structs, so consumers handle one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import msgspec

# ExternalBlockHash: an int (low 64 bits, the default) or the raw digest bytes when vLLM runs
# with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0.
ExternalBlockHash = int | bytes
EventLayout = Literal["map", "array"]

MEDIUM_GPU = "GPU"
MEDIUM_CPU = "CPU"
KV_CACHE_SPEC_FULL_ATTENTION = "full_attention"
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base of the map-tagged events (`{"type": "BlockStored", ...}`)."""


class BlockStored(KVCacheEvent):
    """Blocks became cached: `token_ids` concatenates theirs, `extra_keys` has one per block."""

    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None


class BlockRemoved(KVCacheEvent):
    """Blocks were evicted (vLLM sends one hash per event, at reallocation time)."""

    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    """The whole prefix cache was reset."""


AnyKVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One publish: `[ts, events, data_parallel_rank]` on the wire."""

    ts: float
    events: list[AnyKVEvent]
    data_parallel_rank: int | None = None


_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(KVEventBatch)
_EVENT_TYPES: Mapping[str, type[AnyKVEvent]] = MappingProxyType({
    "BlockStored": BlockStored,
    "BlockRemoved": BlockRemoved,
    "AllBlocksCleared": AllBlocksCleared,
})
# Field order of the legacy array-tagged events (after the tag), oldest fields first.
_LEGACY_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "BlockStored": (
        "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
        "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
        "kv_cache_spec_sliding_window",
    ),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
})
# Legacy payloads predate these fields; they must still convert.
_LEGACY_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "BlockStored": MappingProxyType({"medium": None, "lora_name": None, "lora_id": None}),
    "BlockRemoved": MappingProxyType({"medium": None}),
    "AllBlocksCleared": MappingProxyType({}),
})


def encode_event_batch(batch: KVEventBatch, layout: EventLayout = "map") -> bytes:
    """Serialize a batch as vLLM does: `map` = current layout, `array` = legacy layout."""
    if layout == "map":
        return _ENCODER.encode(batch)
    events = [_legacy_event(event) for event in batch.events]
    wire: list[Any] = [batch.ts, events]
    if batch.data_parallel_rank is not None:
        wire.append(batch.data_parallel_rank)
    return _ENCODER.encode(wire)


def _legacy_event(event: AnyKVEvent) -> list[Any]:
    if isinstance(event, BlockStored):
        return [
            "BlockStored", event.block_hashes, event.parent_block_hash, event.token_ids,
            event.block_size, event.lora_id, event.medium,
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.block_hashes, event.medium]
    return ["AllBlocksCleared"]


def decode_event_batch(payload: bytes) -> KVEventBatch:
    """Decode a payload in any known layout into current structs.

    Raises `msgspec.ValidationError` / `msgspec.DecodeError` for payloads that match none.
    """
    try:
        return _BATCH_DECODER.decode(payload)
    except msgspec.ValidationError:
        pass  # not the current layout; fall back to the generic path below
    raw = msgspec.msgpack.decode(payload)
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise msgspec.ValidationError("KV event batch is neither an array nor a map")
    if not isinstance(events, list):
        raise msgspec.ValidationError("KV event batch has no event list")
    return KVEventBatch(
        ts=float(ts) if isinstance(ts, int | float) else 0.0,
        events=[_decode_event(event) for event in events],
        data_parallel_rank=rank if isinstance(rank, int) else None,
    )


def _decode_event(raw: Any) -> AnyKVEvent:
    if isinstance(raw, dict):
        fields = dict(raw)
        tag = fields.pop("type", None)
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        names = _LEGACY_FIELDS.get(tag, ())
        fields = {**_LEGACY_DEFAULTS.get(tag, {}), **dict(zip(names, raw[1:], strict=False))}
    else:
        raise msgspec.ValidationError(f"unrecognised KV event: {raw!r:.80}")
    event_type = _EVENT_TYPES.get(str(tag))
    if event_type is None:
        raise msgspec.ValidationError(f"unknown KV event type {tag!r}")
    return msgspec.convert(fields, event_type)


def seq_to_bytes(seq: int) -> bytes:
    """A batch sequence number as its 8-byte big-endian frame."""
    return seq.to_bytes(8, "big")


def seq_from_bytes(frame: bytes) -> int:
    """Inverse of `seq_to_bytes`; END_SEQ decodes to -1."""
    return int.from_bytes(frame, "big", signed=True)
