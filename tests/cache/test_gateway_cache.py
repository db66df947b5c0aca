"""Response caching end to end: `kvgate run` and the official openai SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from kvgate.cache.minilm import fetch
from tests.support.processes import RunningGateway, run_gateway
from tests.support.redis_server import run_redis

TENANTS = """
tenants:
  - { name: a, api_keys: [key-a] }
  - { name: b, api_keys: [key-b] }
"""


def config(embedder: str = "hashing", threshold: float = 0.9, backend: str = "memory",
           redis_url: str = "redis://127.0.0.1:1/0") -> str:
    return f"""
providers:
  mock: {{ type: mock }}
models:
  - name: m
    deployments: [ {{ provider: mock, model: small }} ]
cache:
  backend: {backend}
  semantic: {{ enabled: true, embedder: {embedder}, threshold: {threshold} }}
redis: {{ url: "{redis_url}" }}
{TENANTS}"""


def ask(gateway: RunningGateway, text: str, key: str = "key-a",
        system: str = "Answer briefly.") -> tuple[str, str, dict[str, object]]:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="m", temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}])
    answer = raw.parse()
    meta: dict[str, object] = answer.model_extra["kvgate"]  # type: ignore[index]
    return raw.headers["x-kvgate-cache"], answer.choices[0].message.content or "", meta


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway(config()) as running:
        yield running


def test_near_identical_wording_hits_the_semantic_cache(gateway: RunningGateway) -> None:
    status, first, _ = ask(gateway, "What is the capital of France?")
    assert status == "miss"
    status, again, meta = ask(gateway, "what is the capital of France")
    assert status == "semantic" and meta["cache"] == "semantic" and again == first
    assert meta["route"]["similarity"] >= 0.9  # type: ignore[index]
    assert ask(gateway, "What is the capital of France?")[0] == "exact"


def test_other_tenants_contexts_and_topics_never_hit(gateway: RunningGateway) -> None:
    ask(gateway, "Tell me about the Eiffel tower.")
    assert ask(gateway, "tell me about the eiffel tower", key="key-b")[0] == "miss"
    assert ask(gateway, "tell me about the eiffel tower", system="Answer at length.")[0] == "miss"
    assert ask(gateway, "Tell me about the Louvre museum.")[0] == "miss"


def test_a_stream_is_served_from_the_semantic_cache(gateway: RunningGateway) -> None:
    _, first, _ = ask(gateway, "Name three primary colours.")
    client = openai.OpenAI(base_url=gateway.base_url, api_key="key-a", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
            model="m", temperature=0, stream=True,
            messages=[{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "name three primary colours"}]) as response:
        assert response.headers["x-kvgate-cache"] == "semantic"
        text = "".join(chunk.choices[0].delta.content or ""
                       for chunk in response.parse() if chunk.choices)
    assert text == first


def test_minilm_hits_a_real_rewording() -> None:
    fetch()
    with run_gateway(config(embedder="minilm", threshold=0.85)) as gateway:
        status, first, _ = ask(gateway, "What is the capital of France?")
        assert status == "miss"
        status, again, _ = ask(gateway, "Which city is France's capital?")
        assert status == "semantic" and again == first
        assert ask(gateway, "How do I bake sourdough bread?")[0] == "miss"


def test_an_answer_after_failover_is_not_cached() -> None:
    failing = """
providers:
  broken: { type: mock, fail_rate: 1.0, fail_status: 503 }
  spare: { type: mock }
models:
  - name: m
    deployments: [ { provider: broken, model: small }, { provider: spare, model: small } ]
routing:
  strategy: round_robin
  max_attempts: 2
  breaker: { consecutive_failures: 1, cooldown_s: 600 }   # broken is out after one failure
  health_check_interval_s: 0
"""
    with run_gateway(failing) as gateway:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)

        def cached() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="m", temperature=0, messages=[{"role": "user", "content": "hi"}])
            return raw.headers["x-kvgate-cache"]

        assert cached() == "miss"  # broken first, then spare: not stored
        assert cached() == "miss"  # spare at once: stored
        assert cached() == "exact"


def test_two_gateways_share_the_exact_cache_through_redis() -> None:
    with run_redis() as url, run_gateway(config(backend="redis", redis_url=url)) as one, \
            run_gateway(config(backend="redis", redis_url=url)) as two:
        status, first, _ = ask(one, "Shared across instances?")
        assert status == "miss"
        deadline = time.monotonic() + 5
        while (status := ask(two, "Shared across instances?")[0]) != "exact":
            assert status == "miss" and time.monotonic() < deadline  # the write is queued
            time.sleep(0.05)
        assert ask(two, "Shared across instances?")[1] == first
