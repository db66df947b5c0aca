"""The in-memory affinity index: leading-run matches, LRU bound, TTL, memory per entry."""

from __future__ import annotations

import random
import sys

from kvgate.routing.affinity import MemoryAffinityIndex


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_match_counts_only_the_leading_run() -> None:
    index = MemoryAffinityIndex(max_blocks_per_deployment=100, ttl_s=60)
    index.record("a", [1, 2, 3, 4])
    index.record("b", [1, 2, 9])
    assert index.match_now([1, 2, 3, 4, 5], ["a", "b", "c"]) == [4, 2, 0]
    # A hole at the start means no match at all, even if later links are known.
    assert index.match_now([7, 2, 3], ["a"]) == [0]


def test_lru_bound_evicts_tails_before_heads() -> None:
    index = MemoryAffinityIndex(max_blocks_per_deployment=5, ttl_s=60)
    index.record("a", [1, 2, 3, 4])
    index.record("a", [10, 11, 12])
    assert index.size() == 5
    # The newer prompt is whole; the older one lost its tail, not its head.
    assert index.match_now([10, 11, 12], ["a"]) == [3]
    assert index.match_now([1, 2, 3, 4], ["a"]) == [2]


def test_entries_expire_after_ttl_and_refresh_on_use() -> None:
    clock = FakeClock()
    index = MemoryAffinityIndex(max_blocks_per_deployment=100, ttl_s=30, clock=clock)
    index.record("a", [1, 2])
    clock.now_s += 20
    index.record("a", [1])
    clock.now_s += 15
    assert index.match_now([1, 2], ["a"]) == [1]  # 2 is 35 s old, 1 was refreshed 15 s ago
    clock.now_s += 20
    assert index.match_now([1, 2], ["a"]) == [0]


def test_forget_drops_a_deployment() -> None:
    index = MemoryAffinityIndex(max_blocks_per_deployment=10, ttl_s=60)
    index.record("a", [1, 2])
    index.forget("a")
    assert index.match_now([1, 2], ["a"]) == [0]
    assert index.size() == 0


def test_one_million_blocks_fit_in_100_mb() -> None:
    index = MemoryAffinityIndex(max_blocks_per_deployment=250_000, ttl_s=600)
    rng = random.Random(1)
    for deployment in ("a", "b", "c", "d"):
        for _ in range(0, 250_000, 5_000):
            index.record(deployment, [rng.getrandbits(64) for _ in range(5_000)])
    assert index.size() == 1_000_000
    # Everything the index holds: the dicts' tables and the key objects (values are shared
    # per-second int objects, counted once each).
    tables = index._blocks.values()
    table_bytes = sum(sys.getsizeof(t) for t in tables)
    key_bytes = sum(sys.getsizeof(k) for t in tables for k in t)
    tick_bytes = sum(sys.getsizeof(v) for v in {id(v): v for t in tables for v in t.values()}
                     .values())
    total_mb = (table_bytes + key_bytes + tick_bytes) / 1e6
    print(f"1M tracked blocks: {total_mb:.1f} MB")
    assert total_mb < 100
