"""The in-memory affinity index: leading-run matches (the same as a walk per deployment),
LRU bound, memory per entry (the TTL: test_affinity_contract.py), each on both cores: the C
one and the pure-Python one."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.affinity_core import new_core
from tests.support.clock import FakeClock

#: Every test here runs on both cores.
pytestmark = pytest.mark.parametrize("native", [True, False], ids=["c_core", "python_core"])


def memory_index(max_blocks: int, ttl_s: float, native: bool,
                 clock: FakeClock | None = None) -> MemoryAffinityIndex:
    return MemoryAffinityIndex(max_blocks_per_deployment=max_blocks, ttl_s=ttl_s,
                               core=new_core(max_blocks, native=native),
                               **({"clock": clock} if clock is not None else {}))


def test_match_counts_only_the_leading_run(native: bool) -> None:
    index = memory_index(100, 60, native)
    index.record("a", [1, 2, 3, 4])
    index.record("b", [1, 2, 9])
    assert index.match_now([1, 2, 3, 4, 5], ["a", "b", "c"]) == [4, 2, 0]
    # A hole at the start means no match at all, even if later links are known.
    assert index.match_now([7, 2, 3], ["a"]) == [0]


def test_lru_bound_evicts_tails_before_heads(native: bool) -> None:
    index = memory_index(5, 60, native)
    index.record("a", [1, 2, 3, 4])
    index.record("a", [10, 11, 12])
    assert index.size() == 5
    # The newer prompt is whole; the older one lost its tail, not its head.
    assert index.match_now([10, 11, 12], ["a"]) == [3]
    assert index.match_now([1, 2, 3, 4], ["a"]) == [2]


def test_forget_drops_a_deployment(native: bool) -> None:
    index = memory_index(10, 60, native)
    index.record("a", [1, 2])
    index.forget("a")
    assert index.match_now([1, 2], ["a"]) == [0]
    assert index.size() == 0


class ReferenceIndex:
    """The index's meaning, spelled out the slow way: a walk per deployment over its LRU dict
    (the implementation before the per-block holder masks)."""

    def __init__(self, max_blocks: int, ttl_s: float, clock: FakeClock) -> None:
        self.max_blocks, self.ttl_s, self.clock = max_blocks, ttl_s, clock
        self.blocks: dict[str, dict[int, int]] = {}

    def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        oldest_fresh = int(self.clock() - self.ttl_s)
        counts = []
        for deployment_id in deployment_ids:
            blocks, matched = self.blocks.get(deployment_id, {}), 0
            for block_hash in hashes:
                seen = blocks.get(block_hash)
                if seen is None or seen < oldest_fresh:
                    break
                matched += 1
            counts.append(matched)
        return counts

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        blocks = self.blocks.setdefault(deployment_id, {})
        for block_hash in reversed(hashes):
            blocks.pop(block_hash, None)
            blocks[block_hash] = int(self.clock())
        for key in list(blocks)[:max(0, len(blocks) - self.max_blocks)]:
            del blocks[key]


operations = st.lists(st.tuples(
    st.sampled_from(["record", "match", "wait", "forget"]),
    st.sampled_from(["a", "b", "c", "d", "e"]),
    # Short hash lists over a small alphabet: repeats, shared prefixes and holes, and 64-bit
    # values.
    st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, (1 << 63) + 1, (1 << 60) + 2]), max_size=8),
    st.integers(0, 40),
), max_size=60)


@given(ops=operations, max_blocks=st.integers(1, 6))
@settings(max_examples=300, deadline=None)
def test_matches_what_a_walk_per_deployment_finds(
        ops: list[tuple[str, str, list[int], int]], max_blocks: int, native: bool) -> None:
    clock = FakeClock()
    index = memory_index(max_blocks, 30, native, clock)
    reference = ReferenceIndex(max_blocks, 30, clock)
    queried = ["a", "b", "c", "d", "e", "f"]
    for op, deployment_id, hashes, seconds in ops:
        if op == "record":
            index.record(deployment_id, hashes)
            reference.record(deployment_id, hashes)
        elif op == "wait":
            clock.now_s += seconds
        elif op == "forget":
            index.forget(deployment_id)
            reference.blocks.pop(deployment_id, None)
        assert index.match_now(hashes, queried) == reference.match(hashes, queried)
        assert index.match_now(hashes, queried[::-1]) == reference.match(hashes, queried[::-1])


def test_many_groups_of_deployments_matching_different_lengths(native: bool) -> None:
    # More distinct match lengths than a byte can count, then a few: both ways to spread them
    # (and, for the C core, holder sets of five 64-bit words).
    index = memory_index(1000, 60, native)
    chain = list(range(1, 400))
    names = [f"d{i}" for i in range(300)]
    for length, name in enumerate(names):
        index.record(name, chain[:length])
    assert index.match_now(chain, names) == list(range(300))
    assert index.match_now(chain[:2], names[:4]) == [0, 1, 2, 2]


def test_one_million_blocks_fit_in_125_mb(native: bool) -> None:
    # The worst case: no block shared between deployments (a shared prefix costs less per
    # entry: one holder set for all its deployments).
    index = memory_index(250_000, 600, native)
    rng = random.Random(1)
    for deployment in ("a", "b", "c", "d"):
        for _ in range(0, 250_000, 5_000):
            index.record(deployment, [rng.getrandbits(64) for _ in range(5_000)])
    assert index.size() == 1_000_000
    total_mb = index.core.memory_bytes() / 1e6
    print(f"1M tracked blocks ({'C' if native else 'Python'} core): {total_mb:.1f} MB")
    assert total_mb < 125
