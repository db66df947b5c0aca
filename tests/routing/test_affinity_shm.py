"""The shared-memory affinity index: same answers as the memory index, the bucket bound,
models kept apart, and two real processes sharing one table."""

from __future__ import annotations

import random
from multiprocessing.connection import Connection

import pytest

from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
from kvgate.routing.shm_table import AffinitySegment, AffinityTable
from tests.support.clock import FakeClock
from tests.support.processes import reply_from_spawned


def shm_index(num_entries: int = 100_000, clock: FakeClock | None = None,
              namespace: str = "m") -> SharedMemoryAffinityIndex:
    table = AffinityTable.private(num_entries)
    if clock is None:
        return SharedMemoryAffinityIndex(table, namespace=namespace, ttl_s=60)
    return SharedMemoryAffinityIndex(table, namespace=namespace, ttl_s=30, clock=clock)


def chain(rng: random.Random, parent: list[int], extra_links: int) -> list[int]:
    return parent + [rng.getrandbits(64) for _ in range(extra_links)]


@pytest.mark.parametrize("num_deployments", [5, 100])
def test_matches_like_the_memory_index_on_prompt_chains(num_deployments: int) -> None:
    # Chains sharing prefixes (a system prompt, then conversations growing turn by turn), as
    # the fingerprint makes them: the galloping match over one entry per block must count
    # exactly what a walk counts; 100 deployments take 13 tick words per entry.
    rng = random.Random(7)
    shared = SharedMemoryAffinityIndex(AffinityTable.private(100_000, num_deployments),
                                       namespace="m", ttl_s=60)
    memory = MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=60)
    system = chain(rng, [], 5)
    prompts = [system]
    deployments = [f"d{i}" for i in range(num_deployments)]
    for step in range(300):
        parent = rng.choice(prompts)
        prompt = chain(rng, parent, rng.randint(0, 40))
        prompts.append(prompt)
        if step % 3:
            target = rng.choice(deployments)
            shared.record(target, prompt)
            memory.record(target, prompt)
        probe = chain(rng, rng.choice(prompts), rng.randint(0, 3))
        queried = rng.sample(deployments, min(len(deployments), rng.randint(1, 8))) if (
            step % 2) else deployments
        assert shared.match_now(probe, queried) == memory.match_now(probe, queried)


def test_each_holder_of_a_block_expires_on_its_own() -> None:
    clock = FakeClock()
    index = shm_index(clock=clock)
    index.record("a", [1, 2])
    clock.now_s += 20
    index.record("b", [1, 2])
    clock.now_s += 15  # a's entries are 35 s old, b's 15 s
    assert index.match_now([1, 2], ["a", "b"]) == [0, 2]
    index.record("a", [1])
    assert index.match_now([1, 2], ["a", "b"]) == [1, 2]


def test_a_tick_byte_never_wraps_around_to_fresh() -> None:
    # b keeps the entry alive for far more than 255 seconds; a's one-byte tick must not come
    # round to look fresh again (each write zeroes the expired bytes of its entry).
    clock = FakeClock()
    index = shm_index(clock=clock)
    index.record("a", [1])
    for _ in range(80):
        clock.now_s += 5
        index.record("b", [1])
        assert index.match_now([1], ["a", "b"]) == [int(clock.now_s - 1000 <= 30), 1]


def test_a_long_ttl_counts_in_quanta_of_seconds() -> None:
    clock = FakeClock()
    table = AffinityTable.private(1000)
    index = SharedMemoryAffinityIndex(table, namespace="m", ttl_s=300, clock=clock)
    index.record("a", [1])
    clock.now_s += 297
    assert index.match_now([1], ["a"]) == [1]
    clock.now_s += 10
    assert index.match_now([1], ["a"]) == [0]


def test_deployments_past_the_columns_are_not_tracked() -> None:
    index = SharedMemoryAffinityIndex(AffinityTable.private(1000, columns=8), namespace="m",
                                      ttl_s=60)
    ids = [f"d{i}" for i in range(10)]
    for deployment_id in ids:
        index.record(deployment_id, [1, 2])
    assert index.match_now([1, 2], ids) == [2] * 8 + [0, 0]


def test_a_full_bucket_evicts_the_oldest_then_tails_before_heads() -> None:
    clock = FakeClock()
    index = shm_index(num_entries=8, clock=clock)  # one bucket of 8 slots
    index.record("a", [1, 2, 3, 4, 5, 6])
    clock.now_s += 1
    index.record("a", [10, 11, 12, 13])
    # The newer prompt is whole; the older one lost its two deepest links, not its head.
    assert index.match_now([10, 11, 12, 13], ["a"]) == [4]
    assert index.match_now([1, 2, 3, 4, 5, 6], ["a"]) == [4]


def test_forget_drops_one_deployment_only() -> None:
    index = shm_index()
    index.record("a", [1, 2])
    index.record("b", [1, 2])
    index.forget("a")
    assert index.match_now([1, 2], ["a", "b"]) == [0, 2]
    assert index.size() == -1  # the table cannot count cheaply


def test_models_sharing_a_table_are_kept_apart() -> None:
    table = AffinityTable.private(10_000)
    chat = SharedMemoryAffinityIndex(table, namespace="chat", ttl_s=60)
    code = SharedMemoryAffinityIndex(table, namespace="code", ttl_s=60)
    chat.record("gpu-0", [1, 2, 3])
    assert chat.match_now([1, 2, 3], ["gpu-0"]) == [3]
    assert code.match_now([1, 2, 3], ["gpu-0"]) == [0]


def test_table_is_sized_to_a_power_of_two_of_at_least_the_entries() -> None:
    assert AffinityTable.private(1_000_000).num_slots == 1 << 20
    assert AffinityTable.private(8).num_slots == 8


def _attach_match_and_record(segment: str, replies: Connection) -> None:
    """In another process: match what the parent recorded, then record for the parent."""
    index = SharedMemoryAffinityIndex(AffinityTable.attach(segment), namespace="m", ttl_s=60)
    replies.send(index.match_now([11, 12, 13, 14], ["a", "b"]))
    index.record("b", [21, 22])
    replies.close()


def test_two_processes_share_one_segment() -> None:
    segment = AffinitySegment(10_000)
    try:
        index = SharedMemoryAffinityIndex(AffinityTable.attach(segment.name), namespace="m",
                                          ttl_s=60)
        index.record("a", [11, 12, 13])
        seen_by_child = reply_from_spawned(_attach_match_and_record, segment.name)
        assert seen_by_child == [3, 0]
        assert index.match_now([21, 22, 23], ["a", "b"]) == [0, 2]
    finally:
        segment.unlink()
    with pytest.raises(FileNotFoundError):
        AffinityTable.attach(segment.name)


def test_attaching_something_else_is_refused() -> None:
    import mmap

    with pytest.raises(ValueError, match="not an affinity table"):
        AffinityTable(mmap.mmap(-1, 4096))
