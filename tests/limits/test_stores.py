"""One contract for both limit stores: memory, and Redis (a real redis-server) shared by two
gateways' stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis_async

from kvgate.limits import store_redis
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.store import LimitStore, MemoryLimitStore
from kvgate.limits.store_redis import RedisLimitStore
from tests.support.redis_server import run_redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LimitStore, LimitStore]]:
    """Two stores that must share state: one object twice (memory), two clients (Redis)."""
    if request.param == "memory":
        store = MemoryLimitStore()
        yield store, store
        return
    url = request.getfixturevalue("redis_url")
    clients = [redis_async.Redis.from_url(url) for _ in range(2)]
    await clients[0].flushdb()
    yield RedisLimitStore(clients[0]), RedisLimitStore(clients[1])
    for client in clients:
        await client.aclose()


async def charged(store: LimitStore, policy: TenantPolicy, tokens: int, usd: float) -> None:
    store.charge(policy, tokens, usd)
    await store.flush()


async def test_requests_per_minute(stores: tuple[LimitStore, LimitStore]) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=3, tpm=None, budget_usd=None, budget_window="monthly")
    admitted = [await one.admit(policy), await other.admit(policy), await one.admit(policy)]
    assert [a.refused for a in admitted] == [None, None, None]
    assert [round(a.requests_left or 0) for a in admitted] == [2, 1, 0]
    refused = await other.admit(policy)
    assert refused.refused == "requests"
    # One request comes back every 20 s at 3 per minute.
    assert 15 < refused.retry_after_s <= 20
    assert refused.tokens_left is None


async def test_tokens_per_minute_are_charged_after_the_fact(
        stores: tuple[LimitStore, LimitStore]) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=1000, budget_usd=None, budget_window="monthly")
    first = await one.admit(policy)
    assert first.refused is None and first.tokens_left == pytest.approx(1000, abs=1)
    await charged(one, policy, 1500, 0.0)  # a long answer: the bucket goes into debt
    refused = await other.admit(policy)
    assert refused.refused == "tokens"
    assert refused.tokens_left == pytest.approx(-500, abs=5)
    assert 29 < refused.retry_after_s <= 30  # 500 tokens at 1000 per minute
    await charged(other, policy, 1_000_000, 0.0)  # debt is capped at one minute's refill
    capped = await one.admit(policy)
    assert capped.tokens_left == pytest.approx(-1000, abs=5) and capped.retry_after_s <= 60


async def test_a_refusal_takes_nothing_from_the_other_bucket(
        stores: tuple[LimitStore, LimitStore]) -> None:
    one, _ = stores
    policy = TenantPolicy("t", rpm=2, tpm=10, budget_usd=None, budget_window="monthly")
    await charged(one, policy, 50, 0.0)
    for _ in range(3):
        refused = await one.admit(policy)
        assert refused.refused == "tokens"
        assert refused.requests_left == pytest.approx(2, abs=0.01)


async def test_budget_is_spent_per_window_and_refused_once_reached(
        stores: tuple[LimitStore, LimitStore]) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=0.01, budget_window="daily")
    for _ in range(3):
        assert (await one.admit(policy)).refused is None
        await charged(one, policy, 100, 0.004)
    refused = await other.admit(policy)
    assert refused.refused == "budget"
    assert refused.spent_usd == pytest.approx(0.012)
    assert 0 < refused.retry_after_s <= 86400  # until the next UTC midnight
    # Another tenant's spend is its own.
    fresh = await other.admit(TenantPolicy("u", None, None, 0.01, "daily"))
    assert fresh.refused is None and fresh.spent_usd == 0


async def test_concurrent_admissions_never_exceed_the_limit(
        stores: tuple[LimitStore, LimitStore]) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=10, tpm=None, budget_usd=None, budget_window="monthly")
    results = await asyncio.gather(*(store.admit(policy) for store in (one, other) * 10))
    assert sum(r.refused is None for r in results) == 10


async def test_memory_buckets_refill_with_time() -> None:
    now = [0.0]
    store = MemoryLimitStore(clock=lambda: now[0])
    policy = TenantPolicy("t", rpm=60, tpm=600, budget_usd=None, budget_window="monthly")
    for _ in range(60):
        assert (await store.admit(policy)).refused is None
    store.charge(policy, 900, 0.0)
    assert (await store.admit(policy)).refused == "requests"
    now[0] = 1.0  # one request back per second; 10 tokens per second
    refused = await store.admit(policy)
    assert refused.refused == "tokens" and refused.tokens_left == pytest.approx(-290)
    now[0] = 30.0  # the debt is repaid, nothing more: still refused
    assert (await store.admit(policy)).refused == "tokens"
    now[0] = 31.0
    admitted = await store.admit(policy)
    assert admitted.refused is None and admitted.tokens_left == pytest.approx(10.0)


async def test_memory_budget_renews_with_the_window() -> None:
    wall = [1_000_000.0]
    store = MemoryLimitStore(wall_clock=lambda: wall[0])
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=1.0, budget_window=60)
    store.charge(policy, 0, 1.5)
    assert (await store.admit(policy)).refused == "budget"
    wall[0] += 60
    renewed = await store.admit(policy)
    assert renewed.refused is None and renewed.spent_usd == 0.0


async def test_redis_unreachable_admits_and_drops_charges() -> None:
    """Fail open: a Redis outage must not take the gateway down with it."""
    client = redis_async.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = RedisLimitStore(client)
    policy = TenantPolicy("t", rpm=1, tpm=1, budget_usd=0.01, budget_window="daily")
    for _ in range(3):
        assert (await store.admit(policy)).refused is None
    await charged(store, policy, 1000, 1.0)  # logged and dropped, not raised
    await client.aclose()


async def test_queued_charges_are_bounded_while_redis_stalls() -> None:
    client = redis_async.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = RedisLimitStore(client)
    policy = TenantPolicy("t", rpm=None, tpm=10, budget_usd=None, budget_window="daily")
    for _ in range(store_redis.MAX_PENDING_WRITES + 50):
        store.charge(policy, 1, 0.0)
    assert len(store._pending) == store_redis.MAX_PENDING_WRITES
    await store.aclose()
    await client.aclose()
