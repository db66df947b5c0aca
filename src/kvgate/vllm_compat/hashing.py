"""vLLM's prefix-cache block hash, byte for byte (vllm/v1/core/kv_cache_utils.py, 0.33.0).

A block hash is `H((parent_hash, tuple(block_token_ids), extra_keys))` over *full* blocks only,
chained from `NONE_HASH = H(seed)`. Two replicas agree on a block exactly when they agree on the
algorithm, the seed, the block size, every token of the prefix and the extra keys. Extra keys are
tagged tuples, in this order:

- `("lora", name, path)` on every block of a LoRA request;
- `("mm", identifier, item_offset - block_start)` for each multimodal item overlapping the block
  (the offset is negative when the item started in an earlier block);
- `("cache_salt", salt)` on the first block only (the chain carries it into every later hash).

KV events publish the same keys *untagged* (`to_event_extra_keys`) and each hash as its low 64 bits
(`to_event_hash`, vLLM's `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1` default).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NewType

import cbor2
import xxhash

HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
BlockHash = NewType("BlockHash", bytes)
HashFn = Callable[[Any], bytes]
ExtraKeys = tuple[tuple[Any, ...], ...]

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
_EVENT_HASH_MASK = (1 << 64) - 1


def sha256_pickle(obj: Any) -> bytes:
    """vLLM `sha256`: SHA-256 over the highest-protocol pickle (CPython-only, vLLM's default)."""
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def sha256_cbor(obj: Any) -> bytes:
    """vLLM `sha256_cbor`: SHA-256 over canonical CBOR, reproducible outside Python."""
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def xxhash_pickle(obj: Any) -> bytes:
    """vLLM `xxhash`: XXH3-128 over the highest-protocol pickle."""
    return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def xxhash_cbor(obj: Any) -> bytes:
    """vLLM `xxhash_cbor`: XXH3-128 over canonical CBOR."""
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


HASH_FUNCTIONS: Mapping[HashAlgo, HashFn] = MappingProxyType(
    {
        "sha256": sha256_pickle,
        "sha256_cbor": sha256_cbor,
        "xxhash": xxhash_pickle,
        "xxhash_cbor": xxhash_cbor,
    }
)
# Not collision resistant, so vLLM keeps their seed secret (random per process) unless
# PYTHONHASHSEED pins it.
_NON_CRYPTO_ALGOS: frozenset[HashAlgo] = frozenset({"xxhash", "xxhash_cbor"})


def resolve_none_hash_seed(algo: HashAlgo, pythonhashseed: str | None) -> str:
    """The seed a vLLM replica derives NONE_HASH from (`resolve_none_hash_seed`).

    `pythonhashseed` is the *replica's* PYTHONHASHSEED (None when unset): it wins when set;
    otherwise sha256 variants use the fixed default and xxhash variants a fresh random seed, which
    makes their hashes unreproducible by anyone else -- exactly as in vLLM.
    """
    if pythonhashseed is not None:
        return pythonhashseed
    if algo in _NON_CRYPTO_ALGOS:
        return os.urandom(32).hex()
    return DEFAULT_NONE_HASH_SEED


def to_event_hash(block_hash: bytes) -> int:
    """The integer a KV event carries for a block: the digest's low 64 bits, big-endian."""
    return int.from_bytes(block_hash, "big") & _EVENT_HASH_MASK


@dataclass(frozen=True, slots=True)
class MMPlaceholder:
    """One multimodal item in a prompt: its hash and the placeholder tokens it occupies."""

    identifier: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class LoraKey:
    """A LoRA adapter as it enters the block hash (vLLM 0.33 keys on name *and* path)."""

    name: str
    path: str


def block_extra_keys(
    start: int,
    end: int,
    mm_items: Sequence[MMPlaceholder] = (),
    lora: LoraKey | None = None,
    cache_salt: str | None = None,
) -> ExtraKeys | None:
    """Tagged extra keys of the block covering token positions [start, end), or None."""
    keys: list[tuple[Any, ...]] = []
    if lora is not None:
        keys.append(("lora", lora.name, lora.path))
    for item in mm_items:
        if item.offset < end and item.offset + item.length > start:
            keys.append(("mm", item.identifier, item.offset - start))
    if cache_salt and start == 0:
        keys.append(("cache_salt", cache_salt))
    return tuple(keys) if keys else None


def to_event_extra_keys(keys: ExtraKeys | None) -> tuple[Any, ...] | None:
    """Untag one block's keys as vLLM publishes them: mm -> (identifier, offset), others bare."""
    if keys is None:
        return None
    return tuple(key[1:] if key[0] == "mm" else key[1] for key in keys)


class BlockHasher:
    """A hash algorithm bound to its NONE_HASH; computes vLLM block-hash chains.

    Stateless after construction, so one instance can serve every request of a replica (or a
    router hashing on behalf of many replicas that share algorithm and seed).
    """

    def __init__(self, algo: HashAlgo = "sha256", none_hash_seed: str = DEFAULT_NONE_HASH_SEED):
        self.algo: HashAlgo = algo
        self._hash_fn = HASH_FUNCTIONS[algo]
        self.none_hash = BlockHash(self._hash_fn(none_hash_seed))

    def hash_block(
        self,
        parent: bytes | None,
        token_ids: Sequence[int],
        extra_keys: ExtraKeys | None = None,
    ) -> BlockHash:
        """`hash_block_tokens`: hash of one full block given its parent (None for the first)."""
        return BlockHash(
            self._hash_fn((parent or self.none_hash, tuple(token_ids), extra_keys))
        )

    def hash_blocks(
        self,
        token_ids: Sequence[int],
        block_size: int,
        *,
        start_block: int = 0,
        parent: bytes | None = None,
        mm_items: Sequence[MMPlaceholder] = (),
        lora: LoraKey | None = None,
        cache_salt: str | None = None,
    ) -> list[BlockHash]:
        """Hashes of the full blocks from `start_block` on; a trailing partial block is skipped.

        `parent` must be the hash of block `start_block - 1` (None when starting at 0), which lets
        a caller extend a chain incrementally as decode fills blocks.
        """
        hashes: list[BlockHash] = []
        for start, end, keys in iter_block_spans(
            len(token_ids), block_size, start_block, mm_items, lora, cache_salt
        ):
            parent = self.hash_block(parent, token_ids[start:end], keys)
            hashes.append(BlockHash(parent))
        return hashes


def iter_block_spans(
    num_tokens: int,
    block_size: int,
    start_block: int = 0,
    mm_items: Sequence[MMPlaceholder] = (),
    lora: LoraKey | None = None,
    cache_salt: str | None = None,
) -> Iterator[tuple[int, int, ExtraKeys | None]]:
    """(start, end, extra_keys) of each full block from `start_block` on.

    mm items must be sorted by offset and non-overlapping (as vLLM requires); a moving index keeps
    this linear in blocks plus items rather than their product. Same keys as `block_extra_keys`.
    """
    lora_keys: list[tuple[Any, ...]] = [("lora", lora.name, lora.path)] if lora else []
    first_item = 0
    for block in range(start_block, num_tokens // block_size):
        start, end = block * block_size, (block + 1) * block_size
        while first_item < len(mm_items) and (
            mm_items[first_item].offset + mm_items[first_item].length <= start
        ):
            first_item += 1
        keys = list(lora_keys)
        item_index = first_item
        while item_index < len(mm_items) and mm_items[item_index].offset < end:
            item = mm_items[item_index]
            keys.append(("mm", item.identifier, item.offset - start))
            item_index += 1
        if cache_salt and start == 0:
            keys.append(("cache_salt", cache_salt))
        yield start, end, (tuple(keys) if keys else None)
