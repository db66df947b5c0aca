"""The affinity index's C core: built by the install (CI requires it), the same answers as
the Python core over long random runs that grow, shrink and reuse its tables, and bad input
refused without a change."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.affinity_core import (
    NATIVE_AVAILABLE,
    AffinityCore,
    PyAffinityCore,
    new_core,
)
from tests.support.clock import FakeClock


def test_the_install_built_the_c_core_and_the_index_uses_it() -> None:
    # `pip install -e .` compiles it (setup.py); the Python core is only for machines without
    # a compiler, so CI fails here rather than quietly measuring the slow one.
    from kvgate.routing._affinity_native import NativeAffinityCore

    assert NATIVE_AVAILABLE
    index = MemoryAffinityIndex(max_blocks_per_deployment=10, ttl_s=60)
    assert isinstance(index.core, NativeAffinityCore)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_answers_as_the_python_core_over_a_long_random_run(seed: int) -> None:
    """Thousands of operations over up to 150 deployments (holder sets of three words), a
    bound that evicts, expiry, forgetting and re-recording: every match, size and served time
    agrees with the Python core at every step."""
    rng = random.Random(seed)
    clock = FakeClock()
    bound = rng.choice([50, 400, 5000])
    indexes = [MemoryAffinityIndex(max_blocks_per_deployment=bound, ttl_s=30, clock=clock,
                                   core=new_core(bound, native=native))
               for native in (True, False)]
    c_index, py_index = indexes
    deployments = [f"d{i}" for i in range(rng.choice([3, 70, 150]))]
    # Prompts share prefixes: a few roots, each extended by random tails.
    roots = [[rng.getrandbits(64) for _ in range(rng.randint(1, 30))] for _ in range(8)]
    prompts = [root + [rng.getrandbits(64) for _ in range(rng.randint(0, 40))]
               for root in roots for _ in range(6)]
    for _ in range(2500):
        roll = rng.random()
        prompt = rng.choice(prompts)[:rng.randint(0, 70)]
        if roll < 0.45:
            deployment = rng.choice(deployments)
            for index in indexes:
                index.record(deployment, prompt)
        elif roll < 0.5:
            clock.now_s += rng.choice([0.4, 3, 11])
        elif roll < 0.52:
            deployment = rng.choice(deployments)
            for index in indexes:
                index.forget(deployment)
        queried = rng.sample(deployments, rng.randint(1, len(deployments)))
        assert c_index.match_now(prompt, queried) == py_index.match_now(prompt, queried)
        assert c_index.size() == py_index.size()
        if prompt:
            deployment, block = rng.choice(deployments), rng.choice(prompt)
            assert c_index.served_s(deployment, block) == py_index.served_s(deployment, block)


def _lru_order(core: AffinityCore, slot: int, pool: Sequence[int], bound: int,
               tick: int) -> list[int]:
    """The pool's hashes ``slot`` holds, oldest first: read by pushing fresh hashes in one at a
    time (the bound evicts the oldest each time) and seeing which pool hash goes."""
    held = [h for h in pool if core.served(slot, h) is not None]
    order = []
    for fresh in range(bound):
        core.record(slot, [(1 << 63) + fresh], tick)
        order += [h for h in held if h not in order and core.served(slot, h) is None]
    return order


@pytest.mark.parametrize("seed", range(6))
def test_a_record_that_repeats_the_lanes_newest_links_orders_it_as_the_python_core(
        seed: int) -> None:
    """Records whose head is already the slot's newest entries (the same prompt again, a new
    turn after a shared head, lists with repeated hashes, some of those among the kept run):
    the C core keeps that run where it is and puts the rest before it, which must leave the
    LRU order, the ticks and the holdings exactly as moving every hash to the end does."""
    rng = random.Random(seed)
    bound = rng.choice([4, 9, 16])
    cores = [new_core(bound, native=native) for native in (True, False)]
    pool = list(range(1, 20))
    last: list[int] = []
    for step in range(600):
        roll = rng.random()
        if roll < 0.3 and last:  # the same prompt again
            hashes = list(last)
        elif roll < 0.7 and last:  # the last prompt's head, then a tail of its own
            hashes = last[:rng.randint(0, len(last))] + rng.sample(pool, rng.randint(0, 5))
        else:  # anything, repeats included
            hashes = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.2:  # a repeat of the kept head inside the rest
            hashes += hashes[:rng.randint(0, 3)]
        tick = step // 7
        for core in cores:
            core.record(0, hashes, tick)
        last = hashes
        c_core, py_core = cores
        assert [c_core.served(0, h) for h in pool] == [py_core.served(0, h) for h in pool]
        assert c_core.size() == py_core.size()
        if step % 50 == 49:  # the whole order (which empties the pool's entries)
            assert (_lru_order(c_core, 0, pool, bound, tick)
                    == _lru_order(py_core, 0, pool, bound, tick))


#: Ints at the edges of how the C core reads them (30-bit digits; 64 bits in three).
_EDGE_HASHES = [0, 1, 2**30 - 1, 2**30, 2**30 + 1, 2**60 - 1, 2**60, 2**60 + 1, 2**63,
                2**64 - 16, 2**64 - 1]


@pytest.mark.parametrize("seed", range(4))
def test_hashes_at_the_edges_of_64_bits_are_held_as_the_python_core_holds_them(
        seed: int) -> None:
    rng = random.Random(seed)
    c_index, py_index = (MemoryAffinityIndex(max_blocks_per_deployment=64, ttl_s=60,
                                             core=new_core(64, native=native))
                         for native in (True, False))
    assert isinstance(py_index.core, PyAffinityCore)
    assert not isinstance(c_index.core, PyAffinityCore)
    for _ in range(40):
        prompt = rng.sample(_EDGE_HASHES, rng.randint(1, 5))
        deployment = rng.choice("ab")
        for index in (c_index, py_index):
            index.record(deployment, prompt)
        query = [*rng.sample(_EDGE_HASHES, rng.randint(1, 5)), rng.choice([True, 2**64, -1])]
        assert c_index.match_now(query, ["a", "b"]) == py_index.match_now(query, ["a", "b"])
        assert c_index.size() == py_index.size()
    # Beyond 64 bits nothing is held, not even the low 64 bits' block.
    for index in (c_index, py_index):
        index.record("c", [0])
        index.record("d", [1])
        assert index.match_now([2**64], ["c"]) == [0]
        assert index.match_now([2**64 + 1], ["d"]) == [0]
        assert index.match_now([2**90 + 1], ["d"]) == [0]


def test_bad_hashes_are_refused_and_change_nothing() -> None:
    index = MemoryAffinityIndex(max_blocks_per_deployment=10, ttl_s=60)
    index.record("a", [1, 2, 3])
    with pytest.raises(TypeError):
        index.record("a", [4, "5", 6])  # type: ignore[list-item]
    with pytest.raises(OverflowError):  # block hashes are unsigned 64-bit values
        index.record("a", [4, -5])
    with pytest.raises(OverflowError):
        index.record("a", [1 << 64])
    assert index.size() == 3
    assert index.match_now([4], ["a"]) == [0]
    assert index.match_now([1, 2, 3], ["a"]) == [3]
    # A value no block can have is simply not held; a non-integer is an error.
    assert index.match_now([1, -2, 3], ["a"]) == [1]
    assert index.served_s("a", -1) is None and index.served_s("a", 1 << 70) is None
    with pytest.raises(TypeError):
        index.match_now([1, "2"], ["a"])  # type: ignore[list-item]


def test_core_rejects_misuse() -> None:
    core = new_core(10, native=True)
    with pytest.raises(ValueError):
        core.record(-1, [1], 0)
    with pytest.raises(TypeError):
        core.match([1], [0])  # a query must come from prepare_query
    assert core.match([1], core.prepare_query([0, 5000])) == [0, 0]
    assert core.served(9999, 1) is None
    core.forget(9999)  # a slot never seen: nothing to drop
    assert core.expire(10) == PyAffinityCore(1).expire(10)  # nothing left: the same sentinel
    with pytest.raises(OverflowError):  # the one 64-bit tick the core keeps for itself
        core.record(0, [1], -(2**63))
    assert core.size() == 0


def test_reused_entries_after_eviction_keep_the_tables_consistent() -> None:
    """A small bound turned over many times: freed entries and blocks are reused, and the
    holder sets stay exact (a block held by two deployments survives one evicting it)."""
    core = new_core(8, native=True)
    shared = list(range(1, 5))
    for round_number in range(2000):
        core.record(0, [*shared, 1000 + round_number], round_number)
        core.record(1, [*shared, 5000 + round_number % 7], round_number)
    query = core.prepare_query([0, 1])
    assert core.match(shared, query) == [4, 4]
    assert core.size() == 16
    core.forget(0)
    assert core.match([*shared, 5000 + 1999 % 7], query) == [0, 5]
    assert core.size() == 8


def test_an_install_without_the_c_core_says_so_once_and_routes_on_python(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kvgate import native
    from kvgate.routing import affinity_core

    monkeypatch.setattr(affinity_core, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(native, "_warned", set())
    with caplog.at_level("WARNING", logger="kvgate.affinity"):
        first = MemoryAffinityIndex(max_blocks_per_deployment=10, ttl_s=60)
        second = MemoryAffinityIndex(max_blocks_per_deployment=10, ttl_s=60)
    assert isinstance(first.core, PyAffinityCore) and isinstance(second.core, PyAffinityCore)
    warnings = [r for r in caplog.records if "_affinity_native is not built" in r.message]
    assert len(warnings) == 1
    first.record("a", [1, 2])
    assert first.match_now([1, 2, 3], ["a"]) == [2]
