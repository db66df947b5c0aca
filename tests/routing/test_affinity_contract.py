"""One contract, run against every AffinityIndex implementation (memory and shared memory, each
on its C code and on its Python fallback, and a real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_async

from kvgate.routing.affinity import AffinityIndex, MemoryAffinityIndex
from kvgate.routing.affinity_core import PyAffinityCore
from kvgate.routing.affinity_redis import RedisAffinityIndex
from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
from kvgate.routing.shm_table import AffinityTable
from tests.support.clock import FakeClock
from tests.support.redis_server import run_redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis() as url:
        yield url


@pytest.fixture(params=["memory", "memory_python_core", "shared_memory",
                        "shared_memory_python", "redis"])
async def index(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[AffinityIndex]:
    if request.param == "memory":
        yield MemoryAffinityIndex(max_blocks_per_deployment=1000, ttl_s=60)
        return
    if request.param == "memory_python_core":
        yield MemoryAffinityIndex(max_blocks_per_deployment=1000, ttl_s=60,
                                  core=PyAffinityCore(1000))
        return
    if request.param.startswith("shared_memory"):  # its C kernel, or its Python methods
        yield SharedMemoryAffinityIndex(AffinityTable.private(4000), namespace="m", ttl_s=60,
                                        native=request.param == "shared_memory")
        return
    client = redis_async.Redis.from_url(redis_url)
    await client.flushdb()
    redis_index = RedisAffinityIndex(client, key_prefix="t", ttl_s=60)
    yield redis_index
    await redis_index.aclose()


async def test_unknown_prompt_matches_nowhere(index: AffinityIndex) -> None:
    assert await index.match([1, 2, 3], ["a", "b"]) == [0, 0]
    assert await index.match([], ["a"]) == [0]


async def test_leading_run_per_deployment(index: AffinityIndex) -> None:
    index.record("a", [11, 12, 13, 14])
    index.record("b", [11, 12, 99])
    await index.flush()
    assert await index.match([11, 12, 13, 14, 15], ["a", "b", "c"]) == [4, 2, 0]
    assert await index.match([12, 13], ["a"]) == [2]
    assert await index.match([5, 11, 12], ["a", "b"]) == [0, 0]


async def test_recording_again_extends_the_run(index: AffinityIndex) -> None:
    index.record("a", [1, 2])
    await index.flush()
    index.record("a", [1, 2, 3, 4])
    await index.flush()
    assert await index.match([1, 2, 3, 4], ["a"]) == [4]


async def test_large_hashes_round_trip(index: AffinityIndex) -> None:
    big = [(1 << 63) + 5, (1 << 64) - 1]
    index.record("a", big)
    await index.flush()
    assert await index.match(big, ["a"]) == [2]


async def test_concurrent_records_and_matches(index: AffinityIndex) -> None:
    for i in range(50):
        index.record(f"d{i % 5}", [i, i + 1000])
    await index.flush()
    results = await asyncio.gather(*(index.match([i, i + 1000], [f"d{i % 5}"])
                                     for i in range(50)))
    assert all(r == [2] for r in results)


@pytest.mark.parametrize("backend", ["memory", "memory_python_core", "shared_memory",
                                     "shared_memory_python"])
def test_entries_expire_after_ttl_and_refresh_on_use(backend: str) -> None:
    """The in-process backends on a clock the test moves (Redis expires keys on its own)."""
    clock = FakeClock()
    core = PyAffinityCore(100) if backend == "memory_python_core" else None
    index: MemoryAffinityIndex | SharedMemoryAffinityIndex = (
        MemoryAffinityIndex(max_blocks_per_deployment=100, ttl_s=30, clock=clock, core=core)
        if backend.startswith("memory") else SharedMemoryAffinityIndex(
            AffinityTable.private(100_000), namespace="m", ttl_s=30, clock=clock,
            native=backend == "shared_memory"))
    index.record("a", [1, 2])
    clock.now_s += 20
    index.record("a", [1])
    clock.now_s += 15
    assert index.match_now([1, 2], ["a"]) == [1]  # 2 is 35 s old, 1 was refreshed 15 s ago
    clock.now_s += 20
    assert index.match_now([1, 2], ["a"]) == [0]
