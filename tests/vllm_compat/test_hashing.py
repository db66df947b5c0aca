"""Block hashes must equal vLLM 0.33's byte for byte (golden vectors from docs/VLLM_FACTS)."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable

import cbor2
import pytest
import xxhash

from kvgate.vllm_compat.hashing import (
    DEFAULT_NONE_HASH_SEED,
    BlockHasher,
    LoraKey,
    MMPlaceholder,
    block_extra_keys,
    iter_block_spans,
    resolve_none_hash_seed,
    to_event_extra_keys,
    to_event_hash,
)

TOKENS_1_32 = list(range(1, 33))


def test_sha256_none_hash_golden() -> None:
    hasher = BlockHasher("sha256")
    assert hasher.none_hash.hex() == (
        "066b1e8987e027138e98701c46128929378935f9b6cd1549105ae6b4f0d71198"
    )


@pytest.mark.parametrize(
    ("algo", "block0", "block1"),
    [
        ("sha256", 1403909460543360175, 1643945449041937783),
        ("sha256_cbor", 8866452693264111234, 807986237951177663),
    ],
)
def test_event_ints_golden(algo: str, block0: int, block1: int) -> None:
    hasher = BlockHasher(algo)  # type: ignore[arg-type]
    hashes = hasher.hash_blocks(TOKENS_1_32, 16)
    assert [to_event_hash(h) for h in hashes] == [block0, block1]


def test_partial_block_is_not_hashed() -> None:
    hasher = BlockHasher()
    assert len(hasher.hash_blocks(TOKENS_1_32 + [33] * 15, 16)) == 2
    assert hasher.hash_blocks(TOKENS_1_32[:15], 16) == []


def test_chain_depends_on_every_earlier_token() -> None:
    hasher = BlockHasher()
    base = hasher.hash_blocks(TOKENS_1_32, 16)
    changed = hasher.hash_blocks([999, *TOKENS_1_32[1:]], 16)
    assert base[0] != changed[0] and base[1] != changed[1]
    # The same second block after a different first block is a different block.
    assert hasher.hash_block(base[0], TOKENS_1_32[16:]) == base[1]


def test_incremental_hashing_matches_one_shot() -> None:
    hasher = BlockHasher()
    tokens = list(range(100, 164))
    whole = hasher.hash_blocks(tokens, 16)
    head = hasher.hash_blocks(tokens[:32], 16)
    tail = hasher.hash_blocks(tokens, 16, start_block=2, parent=head[-1])
    assert head + tail == whole


def test_sha256_is_pickle_of_the_tuple_with_extra_keys() -> None:
    hasher = BlockHasher("sha256")
    keys = (("mm", "abc", -3), ("cache_salt", "s"))
    expected = hashlib.sha256(
        pickle.dumps((hasher.none_hash, tuple(range(16)), keys), pickle.HIGHEST_PROTOCOL)
    ).digest()
    assert hasher.hash_block(None, range(16), keys) == expected


def test_cbor_and_xxhash_variants_follow_their_definitions() -> None:
    seed = "42"
    variants: list[tuple[str, Callable[[object], bytes]]] = [
        ("sha256_cbor", lambda o: hashlib.sha256(cbor2.dumps(o, canonical=True)).digest()),
        ("xxhash", lambda o: xxhash.xxh3_128_digest(pickle.dumps(o, pickle.HIGHEST_PROTOCOL))),
        ("xxhash_cbor", lambda o: xxhash.xxh3_128_digest(cbor2.dumps(o, canonical=True))),
    ]
    for algo, fn in variants:
        hasher = BlockHasher(algo, seed)  # type: ignore[arg-type]
        none_hash = fn(seed)
        assert hasher.none_hash == none_hash
        assert hasher.hash_block(None, [1, 2]) == fn((none_hash, (1, 2), None))


def test_none_hash_seed_rules() -> None:
    assert resolve_none_hash_seed("sha256", None) == DEFAULT_NONE_HASH_SEED
    assert resolve_none_hash_seed("sha256_cbor", None) == DEFAULT_NONE_HASH_SEED
    assert resolve_none_hash_seed("sha256", "7") == "7"
    assert resolve_none_hash_seed("xxhash", "7") == "7"
    # Non-cryptographic algorithms get a fresh secret seed per process when unpinned.
    assert resolve_none_hash_seed("xxhash", None) != resolve_none_hash_seed("xxhash", None)
    assert resolve_none_hash_seed("xxhash_cbor", None) != DEFAULT_NONE_HASH_SEED


def test_extra_keys_order_and_scope() -> None:
    image = MMPlaceholder("img", offset=10, length=20)  # covers tokens 10..29
    lora = LoraKey("adapter", "/path")
    first = block_extra_keys(0, 16, [image], lora, "salt")
    assert first == (("lora", "adapter", "/path"), ("mm", "img", 10), ("cache_salt", "salt"))
    second = block_extra_keys(16, 32, [image], lora, "salt")
    assert second == (("lora", "adapter", "/path"), ("mm", "img", -6))
    assert block_extra_keys(32, 48, [image]) is None
    assert to_event_extra_keys(first) == ("adapter", ("img", 10), "salt")
    assert to_event_extra_keys(None) is None


def test_iter_block_spans_matches_block_extra_keys() -> None:
    items = [MMPlaceholder("a", 3, 40), MMPlaceholder("b", 43, 5), MMPlaceholder("c", 60, 1)]
    spans = list(iter_block_spans(80, 16, 0, items, None, "s"))
    assert [(s, e) for s, e, _ in spans] == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 80)]
    for start, end, keys in spans:
        assert keys == block_extra_keys(start, end, items, None, "s")
    assert spans[2][2] == (("mm", "a", -29), ("mm", "b", 11))


def test_image_changes_only_the_blocks_it_covers() -> None:
    hasher = BlockHasher()
    tokens = [5] * 64
    image_a = [MMPlaceholder("a", 16, 16)]
    image_b = [MMPlaceholder("b", 16, 16)]
    hashes_a = hasher.hash_blocks(tokens, 16, mm_items=image_a)
    hashes_b = hasher.hash_blocks(tokens, 16, mm_items=image_b)
    assert hashes_a[0] == hashes_b[0]  # before the image
    assert hashes_a[1] != hashes_b[1]  # the image's block
    assert hashes_a[2] != hashes_b[2]  # later blocks inherit the difference via the chain


def test_cache_salt_isolates_whole_chain() -> None:
    hasher = BlockHasher()
    plain = hasher.hash_blocks(TOKENS_1_32, 16)
    salted = hasher.hash_blocks(TOKENS_1_32, 16, cache_salt="tenant-a")
    assert plain[0] != salted[0] and plain[1] != salted[1]
