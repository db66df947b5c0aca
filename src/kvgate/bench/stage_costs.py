"""What the limits and cache stages add per request, measured in-process (no HTTP).

  * limits: admission with reservation + settlement with the memory store; the admission round
    trip, and admission + settlement, with the Redis store (a private redis-server on a free
    loopback port, started and stopped here);
  * semantic cache: embedding a prompt (hashing, minilm) and a lookup in a partition of N
    entries.
Figures are per request, median of repeated runs; the machine's load average is recorded.

Run (from the repository root): python -m kvgate.bench.stage_costs
Writes benchmarks/results/stage_costs.json.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as redis_async
from redis.exceptions import ConnectionError as RedisConnectionError

from kvgate.bench.processes import free_port
from kvgate.cache.embedders import HashingEmbedder
from kvgate.cache.minilm import MiniLMEmbedder, fetch
from kvgate.cache.semantic import SemanticIndex
from kvgate.cache.store import CachedResponse
from kvgate.limits import LimitStore, MemoryLimitStore, RedisLimitStore, TenantPolicy
from kvgate.limits.admission import Estimate

#: Relative to the working directory: run from the repository root.
OUT = Path("benchmarks/results/stage_costs.json")
POLICY = TenantPolicy("t", rpm=10**9, tpm=10**12, budget_usd=1e12, budget_window="monthly")
#: A request's worst case as the limits stage estimates it: 400 tokens, $0.001.
ESTIMATE = Estimate(tokens=400, nusd=1_000_000)
PROMPT = "What is the capital of France? Please answer in one short sentence."


def per_call_us(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return round(statistics.median(samples), 2)


async def per_await_us(fn: Callable[[], Awaitable[object]], calls: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return round(statistics.median(samples), 2)


async def reserve_and_settle(store: LimitStore) -> None:
    """One limited request's store work: admission with its reservation, then settlement
    (awaited here; the gateway queues it off the request path)."""
    admission = await store.admit(POLICY, ESTIMATE)
    store.settle(POLICY, admission.reservation, 300, 0.0007)
    await store.flush()


async def limits() -> dict[str, float]:
    out = {"memory_admit_and_settle_us": await per_await_us(
        functools.partial(reserve_and_settle, MemoryLimitStore()), 20_000)}
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                   "", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            client = redis_async.Redis.from_url(f"redis://127.0.0.1:{port}/0")
            for _ in range(100):
                try:
                    await client.ping()
                    break
                except RedisConnectionError:
                    await asyncio.sleep(0.05)
            store = RedisLimitStore(client)
            await reserve_and_settle(store)  # loads the scripts
            out["redis_admit_round_trip_us"] = await per_await_us(
                lambda: store.admit(POLICY, ESTIMATE), 2_000)
            out["redis_admit_and_settle_us"] = await per_await_us(
                functools.partial(reserve_and_settle, store), 2_000)
            await client.aclose()
        finally:
            server.terminate()
            server.wait()
    return out


def semantic() -> dict[str, Any]:
    hashing = HashingEmbedder()
    fetch()
    minilm = MiniLMEmbedder.load()
    out: dict[str, Any] = {
        "hashing_embed_us": per_call_us(lambda: hashing.embed(PROMPT), 5_000),
        "minilm_embed_us": per_call_us(lambda: minilm.embed(PROMPT), 20, rounds=3),
        "lookup_us_by_partition_entries": {},
    }
    rng = np.random.default_rng(0)
    answer = CachedResponse({"choices": []}, "m", "d")
    for entries in (10, 1_000, 10_000):
        index = SemanticIndex(dimensions=384, max_entries=entries, ttl_s=3600)
        vectors = rng.standard_normal((entries, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for vector in vectors:
            index.insert(b"p", vector, answer)
        probe = vectors[entries // 2]
        out["lookup_us_by_partition_entries"][entries] = per_call_us(
            functools.partial(index.lookup, b"p", probe, 0.95), 200)
    return out


def main() -> None:
    document = {
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "limits": asyncio.run(limits()),
        "semantic": semantic(),
    }
    print(json.dumps(document, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
