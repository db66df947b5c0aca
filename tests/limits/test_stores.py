"""One contract for both limit stores: memory, and Redis (a real redis-server) shared by two
gateways' stores. Reservations: held at admission, released and charged once at settlement,
expired when never settled, kept in the window they were made in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis.asyncio as redis_async

from kvgate.limits import store_redis
from kvgate.limits.admission import Estimate, to_nusd
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.store import LimitBackendError, LimitStore, MemoryLimitStore
from kvgate.limits.store_redis import RedisLimitStore
from tests.support.redis_server import run_redis

Pair = tuple[LimitStore, LimitStore]
MakePair = Callable[[float], Pair]
FREE = Estimate(tokens=0, nusd=0)


def usd(amount: float, tokens: int = 0) -> Estimate:
    return Estimate(tokens=tokens, nusd=to_nusd(amount))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakePair]:
    """Builds two stores that must share state (one object twice in memory, two clients on
    Redis) whose reservations expire after the given TTL."""
    clients: list[redis_async.Redis] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        clients = [redis_async.Redis.from_url(url) for _ in range(2)]
        await clients[0].flushdb()

    def build(ttl_s: float) -> Pair:
        if not clients:
            store = MemoryLimitStore(reservation_ttl_s=ttl_s)
            return store, store
        one, two = (RedisLimitStore(c, reservation_ttl_s=ttl_s) for c in clients)
        return one, two

    yield build
    for client in clients:
        await client.aclose()


@pytest.fixture
def stores(make: MakePair) -> Pair:
    return make(600.0)


async def settled(store: LimitStore, policy: TenantPolicy, admission_tokens: int = 0,
                  used_tokens: int = 0, cost_usd: float = 0.0) -> None:
    admission = await store.admit(policy, Estimate(admission_tokens, 0))
    assert admission.refused is None
    store.settle(policy, admission.reservation, used_tokens, cost_usd)
    await store.flush()


async def test_requests_per_minute(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=3, tpm=None, budget_usd=None, budget_window="monthly")
    admitted = [await one.admit(policy, FREE), await other.admit(policy, FREE),
                await one.admit(policy, FREE)]
    assert [a.refused for a in admitted] == [None, None, None]
    assert [round(a.requests_left or 0) for a in admitted] == [2, 1, 0]
    refused = await other.admit(policy, FREE)
    assert refused.refused == "requests"
    assert 15 < refused.retry_after_s <= 20  # one request back every 20 s at 3 per minute
    assert refused.tokens_left is None


async def test_tokens_are_reserved_at_admission_and_settled_to_usage(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=1000, budget_usd=None, budget_window="monthly")
    first = await one.admit(policy, Estimate(600, 0))
    assert first.refused is None and first.tokens_left == pytest.approx(400, abs=1)
    refused = await other.admit(policy, Estimate(600, 0))  # 400 left < 600 estimated
    assert refused.refused == "tokens" and 11 < refused.retry_after_s <= 12
    one.settle(policy, first.reservation, 100, 0.0)  # used 100 of 600: 500 come back
    await one.flush()
    again = await other.admit(policy, Estimate(600, 0))
    assert again.refused is None and again.tokens_left == pytest.approx(300, abs=2)
    other.settle(policy, again.reservation, 2600, 0.0)  # 2000 beyond: debt, capped at -tpm
    await other.flush()
    capped = await one.admit(policy, Estimate(1, 0))
    assert capped.refused == "tokens" and capped.tokens_left == pytest.approx(-1000, abs=5)


async def test_an_estimate_larger_than_the_bucket_waits_for_a_full_bucket(stores: Pair) -> None:
    one, _ = stores
    policy = TenantPolicy("t", rpm=None, tpm=100, budget_usd=None, budget_window="monthly")
    admitted = await one.admit(policy, Estimate(5000, 0))
    assert admitted.refused is None and admitted.tokens_left == pytest.approx(-100, abs=1)


async def test_a_refusal_takes_nothing_from_the_other_bucket(stores: Pair) -> None:
    one, _ = stores
    policy = TenantPolicy("t", rpm=2, tpm=10, budget_usd=None, budget_window="monthly")
    await settled(one, policy, used_tokens=50)
    for _ in range(3):
        refused = await one.admit(policy, FREE)
        assert refused.refused == "tokens"
        assert refused.requests_left == pytest.approx(1, abs=0.01)


async def test_budget_counts_spend_and_outstanding_reservations(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=0.01, budget_window="daily")
    first, second = await one.admit(policy, usd(0.004)), await other.admit(policy, usd(0.004))
    assert first.refused is None and second.refused is None
    assert second.reserved_usd == pytest.approx(0.008) and second.spent_usd == 0
    third = await one.admit(policy, usd(0.004))  # 0 spent + 0.008 held + 0.004 > 0.01
    assert third.refused == "budget" and 0 < third.retry_after_s <= 86400
    one.settle(policy, first.reservation, 0, 0.001)  # cost less than reserved
    await one.flush()
    fourth = await other.admit(policy, usd(0.004))  # 0.001 + 0.004 + 0.004 <= 0.01
    assert fourth.refused is None
    assert fourth.spent_usd == pytest.approx(0.001) and fourth.reserved_usd == pytest.approx(0.008)
    fresh = await other.admit(TenantPolicy("u", None, None, 0.01, "daily"), usd(0.004))
    assert fresh.refused is None and fresh.spent_usd == 0  # another policy's budget is its own


async def test_concurrent_admissions_never_reserve_beyond_the_budget(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=10, tpm=None, budget_usd=0.05, budget_window="daily")
    results = await asyncio.gather(*(s.admit(policy, usd(0.01)) for s in (one, other) * 10))
    assert sum(r.refused is None for r in results) == 5  # budget first, then rpm
    assert {r.refused for r in results if r.refused} == {"budget"}


async def test_settled_figures_are_exact_sums(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=100.0, budget_window="daily")
    costs = [0.0012345, 0.1, 0.03, 0.0000001, 0.2] * 4
    admissions = await asyncio.gather(*(one.admit(policy, usd(0.5)) for _ in costs))
    for index, (admission, cost) in enumerate(zip(admissions, costs, strict=True)):
        (one if index % 2 else other).settle(policy, admission.reservation, 0, cost)
    await one.flush()
    await other.flush()
    usage = await other.usage(policy)
    assert usage.spent_usd == pytest.approx(sum(costs), abs=1e-9)
    assert usage.reserved_usd == 0 and usage.reservations == 0


async def test_a_reservation_never_settled_expires(make: MakePair) -> None:
    one, other = make(0.5)
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=0.01, budget_window="daily")
    held = await one.admit(policy, usd(0.009))
    assert (await other.admit(policy, usd(0.009))).refused == "budget"
    assert (await other.usage(policy)).reservations == 1
    await asyncio.sleep(0.6)
    usage = await other.usage(policy)
    assert usage.reservations == 0 and usage.reserved_usd == 0
    assert (await other.admit(policy, usd(0.009))).refused is None
    one.settle(policy, held.reservation, 0, 0.002)  # a late settlement still charges its cost
    await one.flush()
    assert (await other.usage(policy)).spent_usd == pytest.approx(0.002)


async def test_a_reservation_belongs_to_the_window_it_was_made_in(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=None, tpm=None, budget_usd=0.01, budget_window=2)
    held = await one.admit(policy, usd(0.006))
    await asyncio.sleep(max(0.0, held.reservation.window_ends_s - time.time()) + 0.05)
    renewed = await other.admit(policy, usd(0.006))  # the old reservation does not count
    assert renewed.refused is None and renewed.spent_usd == 0
    assert renewed.reserved_usd == pytest.approx(0.006)
    one.settle(policy, held.reservation, 0, 0.005)  # charged to the window that ended
    await one.flush()
    usage = await other.usage(policy)
    assert usage.spent_usd == 0 and usage.reserved_usd == pytest.approx(0.006)
    assert usage.window == renewed.reservation.window != held.reservation.window


async def test_reset_renews_the_window_and_the_buckets(stores: Pair) -> None:
    one, other = stores
    policy = TenantPolicy("t", rpm=1, tpm=None, budget_usd=0.01, budget_window="daily")
    in_flight = await one.admit(policy, usd(0.004))
    assert (await other.admit(policy, FREE)).refused == "requests"
    await other.reset(policy)
    usage = await one.usage(policy)
    assert (usage.spent_usd, usage.reserved_usd, usage.requests_left) == (0, 0, 1)
    one.settle(policy, in_flight.reservation, 0, 0.003)  # still charged, to the renewed window
    await one.flush()
    usage = await other.usage(policy)
    assert usage.spent_usd == pytest.approx(0.003) and usage.reserved_usd == 0


async def test_memory_buckets_refill_with_time() -> None:
    now = [0.0]
    store = MemoryLimitStore(clock=lambda: now[0])
    policy = TenantPolicy("t", rpm=60, tpm=600, budget_usd=None, budget_window="monthly")
    for _ in range(59):
        assert (await store.admit(policy, FREE)).refused is None
    last = await store.admit(policy, FREE)
    store.settle(policy, last.reservation, 900, 0.0)
    assert (await store.admit(policy, FREE)).refused == "requests"
    now[0] = 1.0  # one request back per second; 10 tokens per second
    refused = await store.admit(policy, FREE)
    assert refused.refused == "tokens" and refused.tokens_left == pytest.approx(-290)
    now[0] = 30.1
    admitted = await store.admit(policy, FREE)
    assert admitted.refused is None and admitted.tokens_left == pytest.approx(1.0)


async def test_redis_unreachable_raises_and_reports_lost_settlements() -> None:
    client = redis_async.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    errors: list[str] = []
    store = RedisLimitStore(client, on_backend_error=errors.append)
    policy = TenantPolicy("t", rpm=1, tpm=1, budget_usd=0.01, budget_window="daily")
    with pytest.raises(LimitBackendError):
        await store.admit(policy, FREE)
    with pytest.raises(LimitBackendError):
        await store.usage(policy)
    admitted = await MemoryLimitStore().admit(policy, FREE)
    store.settle(policy, admitted.reservation, 1000, 1.0)
    await store.flush()  # logged and counted, not raised
    assert errors == ["settle"]
    await client.aclose()


async def test_queued_settlements_are_bounded_while_redis_stalls() -> None:
    client = redis_async.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    errors: list[str] = []
    store = RedisLimitStore(client, on_backend_error=errors.append)
    policy = TenantPolicy("t", rpm=None, tpm=10, budget_usd=None, budget_window="daily")
    admitted = await MemoryLimitStore().admit(policy, FREE)
    for _ in range(store_redis.MAX_PENDING_WRITES + 50):
        store.settle(policy, admitted.reservation, 1, 0.0)
    assert len(store._pending) == store_redis.MAX_PENDING_WRITES
    assert errors.count("settle") == 50
    await store.aclose()
    await client.aclose()
