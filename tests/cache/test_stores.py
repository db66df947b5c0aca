"""Response stores: memory, and Redis (a real redis-server) shared by two gateways' stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_async

from kvgate.cache.store import CachedResponse, MemoryResponseStore, ResponseStore
from kvgate.cache.store_redis import RedisResponseStore
from tests.support.redis_server import run_redis


def answer(text: str) -> CachedResponse:
    return CachedResponse({"choices": [{"message": {"content": text}}]}, "small", "dep")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ResponseStore, ...]]:
    if request.param == "memory":
        store = MemoryResponseStore(max_entries=3, ttl_s=0.5)
        yield store, store
        return
    clients = [redis_async.Redis.from_url(request.getfixturevalue("redis_url"))
               for _ in range(2)]
    await clients[0].flushdb()
    yield tuple(RedisResponseStore(c, max_entries=3, ttl_s=0.5) for c in clients)
    for client in clients:
        await client.aclose()


async def test_an_entry_written_by_one_is_read_by_the_other(
        stores: tuple[ResponseStore, ResponseStore]) -> None:
    one, other = stores
    one.put(b"k1", answer("hello"))
    await one.flush()
    hit = await other.get(b"k1")
    assert hit == answer("hello")
    assert await other.get(b"k2") is None


async def test_entries_expire_after_their_ttl(stores: tuple[ResponseStore, ResponseStore]) -> None:
    one, other = stores
    one.put(b"k", answer("soon gone"))
    await one.flush()
    assert await other.get(b"k") is not None
    await asyncio.sleep(0.6)
    assert await other.get(b"k") is None


async def test_least_recently_used_entries_go_beyond_the_bound(
        stores: tuple[ResponseStore, ResponseStore]) -> None:
    one, other = stores
    for key in (b"a", b"b", b"c"):
        one.put(key, answer(key.decode()))
        await one.flush()
    assert await other.get(b"a") is not None  # a is now the most recently used
    one.put(b"d", answer("d"))
    await one.flush()
    assert [await other.get(k) is not None for k in (b"a", b"b", b"c", b"d")] == [
        True, False, True, True]
    assert one.size() in (3, -1)  # -1: the store cannot tell cheaply (the contract allows it)


def test_memory_store_counts_its_entries() -> None:
    store = MemoryResponseStore(max_entries=2, ttl_s=60)
    assert store.size() == 0
    for key in (b"a", b"b", b"c"):
        store.put(key, answer(key.decode()))
    assert store.size() == 2


async def test_redis_down_is_a_miss_not_an_error() -> None:
    client = redis_async.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = RedisResponseStore(client, max_entries=10, ttl_s=60)
    store.put(b"k", answer("dropped"))
    await store.flush()
    assert await store.get(b"k") is None
    await client.aclose()
