"""A request's vLLM block hashes, computed in the gateway: golden vectors.

The VLLM_FACTS vectors (tokens 1..32, block 16) must come out of the whole request path; the
chat vectors pin a tiny local tokenizer + ChatML template end to end (token ids and event ints),
and the image vector uses the vLLM-verified blake3 image hash from tests/vllm_compat.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvgate.config.schema import DeploymentSettings
from kvgate.core.call import Call
from kvgate.request.parse import parse_call
from kvgate.routing.precise.request_hasher import (
    RequestHasher,
    build_request_hasher,
    unreproducible_reason,
)
from kvgate.vllm_compat.hashing import BlockHasher, LoraKey, MMPlaceholder, to_event_hash
from tests.routing.precise.tiny_tokenizer import build_tiny_tokenizer

MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
# 4x3 plain-RGB PNG and vLLM 0.33's mm hash of it with MODEL (tests/vllm_compat/test_mm_hash.py).
RGB_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000040000000308020000003b9639910000001449444154789c"
    "63e4129163800126062480c20100093400428f0b6d120000000049454e44ae426082"
)
RGB_PNG_MM_HASH = "0652647fc6f9db7ae706df2c8a438ff2087b7ed2728a3533345cd3eec0525cc8"
CHAT: dict[str, Any] = {"model": MODEL, "messages": [
    {"role": "system", "content": "you are a helpful bot"},
    {"role": "user", "content": "hello world what is the kv"},
]}
CHAT_IDS = [26, 1, 4, 5, 6, 7, 8, 27, 26, 2, 9, 10, 11, 12, 22, 19, 27, 26, 3]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def as_call(body: dict[str, Any]) -> Call:
    endpoint = "chat" if "messages" in body else "completion"
    return parse_call(orjson.dumps(body), endpoint, models={body["model"]},  # type: ignore[arg-type]
                      max_image_bytes=1 << 20)


def hasher(tokenizer: str, **settings: Any) -> RequestHasher:
    ds = DeploymentSettings(provider="p", model=MODEL, tokenizer=tokenizer, **settings)
    assert unreproducible_reason(ds) is None
    return build_request_hasher(ds)


@pytest.mark.parametrize(("algo", "expected"), [
    ("sha256", (1403909460543360175, 1643945449041937783)),
    ("sha256_cbor", (8866452693264111234, 807986237951177663)),
])
def test_vllm_facts_vectors_through_the_request_path(tokenizer_dir: Path, algo: str,
                                                      expected: tuple[int, int]) -> None:
    blocks = hasher(str(tokenizer_dir), hash_algo=algo).hash_call(
        as_call({"model": MODEL, "prompt": list(range(1, 33))})
    )
    assert blocks.keys == expected
    assert blocks.num_prompt_tokens == 32 and blocks.hit_tokens(2) == 31  # never the last token


def test_chat_template_and_tokenizer_golden(tokenizer_dir: Path) -> None:
    h = hasher(str(tokenizer_dir), block_size=4)
    assert h.renderer.render(as_call(CHAT)).token_ids == CHAT_IDS
    blocks = h.hash_call(as_call(CHAT))
    assert blocks.keys == (1864461715910830118, 2698152935307273970, 7262306282360658894,
                           10142508348337441647)
    independent = BlockHasher("sha256").hash_blocks(CHAT_IDS, 4)
    assert blocks.keys == tuple(to_event_hash(x) for x in independent)


def test_cache_salt_and_algorithms_golden(tokenizer_dir: Path) -> None:
    salted = hasher(str(tokenizer_dir), block_size=4).hash_call(
        as_call({**CHAT, "cache_salt": "tenant-a"})
    )
    assert salted.keys == (11756286796889605292, 3988964905147360708, 17361481837892643126,
                           16129773945688648684)
    cbor = hasher(str(tokenizer_dir), block_size=4, hash_algo="sha256_cbor").hash_call(
        as_call(CHAT)
    )
    assert cbor.keys == (1323864754460352107, 13398294903312548778, 4359835730004212788,
                         15366890451982616798)
    seeded = hasher(str(tokenizer_dir), block_size=4, hash_algo="xxhash", hash_seed="42")
    expected = BlockHasher("xxhash", "42").hash_blocks(CHAT_IDS, 4)
    assert seeded.hash_call(as_call(CHAT)).keys == tuple(to_event_hash(x) for x in expected)


def test_image_placeholders_and_mm_hash_golden(tokenizer_dir: Path) -> None:
    url = "data:image/png;base64," + base64.b64encode(RGB_PNG).decode()
    body = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]}
    h = hasher(str(tokenizer_dir), block_size=4, image_tokens=6)
    prompt = h.renderer.render(as_call(body))
    # vLLM's placement: the message's image placeholder first, expanded to 6 image tokens.
    assert prompt.token_ids == [26, 2, *[28] * 6, 11, 12, 13, 14, 15, 27, 26, 3]
    assert prompt.mm_items == (MMPlaceholder(RGB_PNG_MM_HASH, 2, 6),)
    blocks = h.hash_call(as_call(body))
    assert blocks.keys == (5749349046275250819, 3335966841968630832, 595024154129378153,
                           17091558201831537219)
    # A client uuid replaces the hash; an http URL cannot be hashed, so hashing stops before it.
    content: list[dict[str, Any]] = body["messages"][0]["content"]  # type: ignore[index]
    content[1]["uuid"] = "my-image"
    assert h.renderer.render(as_call(body)).mm_items[0].identifier == "my-image"
    content[1] = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    prompt = h.renderer.render(as_call(body))
    assert prompt.exact_tokens == 2 and h.hash_call(as_call(body)).keys == ()


def test_lora_adapter_key(tokenizer_dir: Path) -> None:
    ds = DeploymentSettings(provider="p", model="sql-lora", tokenizer=str(tokenizer_dir),
                            block_size=4, lora_path="/adapters/sql")
    blocks = build_request_hasher(ds).hash_call(as_call({**CHAT, "model": "sql-lora"}))
    expected = BlockHasher("sha256").hash_blocks(CHAT_IDS, 4, lora=LoraKey("sql-lora",
                                                                           "/adapters/sql"))
    assert blocks.keys == tuple(to_event_hash(x) for x in expected)


def test_unreproducible_configurations_are_named() -> None:
    assert unreproducible_reason(DeploymentSettings(provider="p", model="m")) is not None
    secret = DeploymentSettings(provider="p", model="m", tokenizer="x", hash_algo="xxhash")
    assert "random" in str(unreproducible_reason(secret))


def test_simulator_tokenizer_matches_the_replica_renderer() -> None:
    from kvgate.sim.profiles import get_profile
    from kvgate.sim.prompt import PromptRenderer
    from kvgate.vllm_compat.sim_tokenizer import SimTokenizer

    h = hasher("kvgate-sim:llava-onevision-7b-a40", image_tokens=20)
    url = "data:image/png;base64," + base64.b64encode(RGB_PNG).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "tell me " * 40}]}]
    call = as_call({"model": MODEL, "messages": messages})
    replica = PromptRenderer(get_profile("llava-onevision-7b-a40"), SimTokenizer(), 20)
    rendered = replica.render_chat(messages)
    expected = BlockHasher("sha256").hash_blocks(rendered.token_ids, 16,
                                                 mm_items=rendered.mm_items)
    assert rendered.mm_items[0].identifier == RGB_PNG_MM_HASH
    assert h.hash_call(call).keys == tuple(to_event_hash(x) for x in expected)


def test_token_blocks_match_a_replica_whose_hashes_are_secret() -> None:
    """xxhash with vLLM's random seed: the gateway keys blocks by the events' token ids."""
    import os

    from kvgate.routing.precise.index import ReplicaKVIndex
    from kvgate.sim.engine import Engine, EngineConfig
    from kvgate.sim.events import CollectingSink
    from kvgate.sim.profiles import get_profile
    from kvgate.sim.prompt import PromptRenderer
    from kvgate.sim.request import EngineRequest
    from kvgate.vllm_compat.kv_events import KVEventBatch, decode_event_batch, encode_event_batch
    from kvgate.vllm_compat.sim_tokenizer import SimTokenizer

    profile = get_profile("llava-onevision-7b-a40")
    sink = CollectingSink()
    engine = Engine(profile, EngineConfig(num_gpu_blocks=400, hash_algo="xxhash",
                                          none_hash_seed=os.urandom(16).hex(),
                                          enable_kv_events=True), sink=sink)
    url = "data:image/png;base64," + base64.b64encode(RGB_PNG).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "tell me " * 40}]}]
    rendered = PromptRenderer(profile, SimTokenizer(), 20).render_chat(messages)
    engine.submit(EngineRequest("a", rendered.token_ids, [7] * 3, mm_items=rendered.mm_items,
                                cache_salt="s1"), 0.0)
    now = 0.0
    while engine.has_unfinished_requests():
        step, _ = engine.step(now)
        assert step is not None
        now = step.end_s

    index = ReplicaKVIndex(max_blocks=10_000, pending_ttl_s=0, token_blocks=True)
    for ts, events in sink.batches:  # through the wire format, as the subscriber sees them
        index.apply(decode_event_batch(encode_event_batch(KVEventBatch(ts, events))).events)
    h = build_request_hasher(DeploymentSettings(
        provider="p", model=MODEL, tokenizer="kvgate-sim:llava-onevision-7b-a40",
        hash_algo="xxhash", image_tokens=20), token_blocks=True)
    body = {"model": MODEL, "messages": messages, "cache_salt": "s1"}
    blocks = h.hash_call(as_call(body))
    assert len(blocks.keys) == len(rendered.token_ids) // 16
    assert index.match(blocks.keys).gpu_blocks == len(blocks.keys)
    other_salt = h.hash_call(as_call({**body, "cache_salt": "s2"}))
    assert index.match(other_salt.keys).gpu_blocks == 0
