"""Two gateway processes on one real redis-server route each prefix to the same replica."""

from __future__ import annotations

import time

import httpx

from tests.support.processes import run_gateway
from tests.support.redis_server import run_redis

CONFIG = """
providers:
  r0: { type: mock }
  r1: { type: mock }
  r2: { type: mock }
  r3: { type: mock }
models:
  - name: chat
    deployments:
      - { provider: r0, model: m }
      - { provider: r1, model: m }
      - { provider: r2, model: m }
      - { provider: r3, model: m }
routing: { strategy: prefix_kv_aware, affinity_backend: redis }
redis: { url: "REDIS_URL" }
cache: { exact: { enabled: false } }
"""

DOCS = [f"Shared document {i}. " + "The quick brown fox jumps over the lazy dog. " * 40
        for i in range(8)]


def ask(url: str, doc: str, question: str, stream: bool = False) -> httpx.Response:
    body = {"model": "chat", "stream": stream, "messages": [
        {"role": "system", "content": doc}, {"role": "user", "content": question}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10)


def test_two_instances_agree_through_redis() -> None:
    with run_redis() as redis_url:
        config = CONFIG.replace("REDIS_URL", redis_url)
        with run_gateway(config) as a, run_gateway(config) as b:
            homes = {}
            for doc in DOCS:
                response = ask(a.url, doc, "first question")
                assert response.status_code == 200
                homes[doc] = response.headers["x-kvgate-deployment"]
                assert response.json()["kvgate"]["route"]["outcome"] == "cold"
            # Cold prompts spread over the fleet.
            assert len(set(homes.values())) >= 3
            time.sleep(0.3)  # affinity writes are pipelined in the background
            for doc in DOCS:
                response = ask(b.url, doc, "a different question from another instance")
                route = response.json()["kvgate"]["route"]
                assert response.headers["x-kvgate-deployment"] == homes[doc], route
                assert route["outcome"] == "hit"
                assert route["matched_tokens"] > 400
                assert response.headers["x-kvgate-route-outcome"] == "hit"
            # Streams carry the verdict in headers.
            with httpx.stream("POST", b.url + "/v1/chat/completions", json={
                "model": "chat", "stream": True, "messages": [
                    {"role": "system", "content": DOCS[0]},
                    {"role": "user", "content": "streamed"}]}) as stream:
                assert stream.headers["x-kvgate-deployment"] == homes[DOCS[0]]
                assert int(stream.headers["x-kvgate-route-matched-tokens"]) > 400
            metrics = httpx.get(b.url + "/metrics").text
            assert 'kvgate_routing_decisions_total{deployment="' in metrics
            assert 'outcome="hit"' in metrics
