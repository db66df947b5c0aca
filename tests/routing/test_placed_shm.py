"""The workers' placed-KV board: every worker's placements counted by every worker, expiring on
time even when their owner is idle or gone, a dead worker's slot adopted, and two
``prefix_kv_aware`` workers placing cold prefixes as one would."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pytest

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment
from kvgate.request.parse import parse_call
from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
from kvgate.routing.placed_shm import BOARD_BUCKETS, PlacementBoard, SharedPlacements, board_words
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.routing.shm_table import AffinitySegment, AffinityTable
from tests.routing.factories import deployment
from tests.support.clock import FakeClock
from tests.support.processes import reply_from_spawned

HORIZON_S = 64.0  # one-second buckets
BUCKET_S = HORIZON_S / BOARD_BUCKETS


def board(pid: int, buffer: memoryview, slots: int = 3, entries: int = 4
          ) -> PlacementBoard | None:
    return PlacementBoard.claim(buffer, 0, slots, entries, BOARD_BUCKETS, locked=nullcontext,
                                pid=pid)


def buffer_for(slots: int = 3, entries: int = 4) -> memoryview:
    return memoryview(bytearray(8 * board_words(slots, entries)))


def two_workers(entries: Sequence[int | None] = (0, 1)) -> tuple[SharedPlacements,
                                                                 SharedPlacements]:
    """Two processes' views of one board (this process and its parent: both alive)."""
    buffer = buffer_for()
    mine, theirs = board(os.getpid(), buffer), board(os.getppid(), buffer)
    assert mine is not None and theirs is not None
    return (SharedPlacements(mine, entries, HORIZON_S),
            SharedPlacements(theirs, entries, HORIZON_S))


def test_each_worker_counts_every_workers_placements() -> None:
    a, b = two_workers()
    a.add(0, 100.0, 1000.0)
    b.add(0, 50.0, 1001.0)
    b.add(1, 30.0, 1001.5)
    assert dict(a.totals(1002.0)) == {0: 150.0, 1: 30.0}
    assert dict(b.totals(1002.0)) == {0: 150.0, 1: 30.0}


def test_an_idle_workers_placements_expire_without_it() -> None:
    a, b = two_workers()
    a.add(0, 100.0, 1000.0)
    b.add(0, 50.0, 1030.0)  # b never refreshes again
    assert dict(a.totals(1060.0)) == {0: 150.0, 1: 0.0}
    # a's expire when a refreshes; b's, though b does not, half a horizon later.
    assert dict(a.totals(1000.0 + HORIZON_S + 2)) == {0: 50.0, 1: 0.0}
    assert dict(a.totals(1030.0 + HORIZON_S + 2)) == {0: 0.0, 1: 0.0}
    # b, back after two horizons, reuses its buckets without counting their old tokens.
    b.add(0, 7.0, 1030.0 + 3 * HORIZON_S)
    assert dict(a.totals(1031.0 + 3 * HORIZON_S)) == {0: 7.0, 1: 0.0}
    assert dict(b.totals(1031.0 + 3 * HORIZON_S)) == {0: 7.0, 1: 0.0}


@pytest.mark.parametrize("seed", range(3))
def test_totals_equal_a_hand_count_over_random_placements_and_refreshes(seed: int) -> None:
    rng = random.Random(seed)
    workers = two_workers((0, 1, None))  # the third deployment is not on the board
    placed: list[tuple[int, float, float]] = []  # (position, tokens, second)
    now_s = 5_000.0
    for _ in range(600):
        now_s += rng.expovariate(1.0) * 2
        worker = rng.choice(workers)
        if rng.random() < 0.7:
            position, tokens = rng.randrange(3), float(rng.randrange(1, 5_000))
            worker.add(position, tokens, now_s)
            placed.append((position, tokens, now_s))
            continue
        # By hand: a placement counts while its bucket's start is within the horizon.
        oldest_epoch = math.ceil((now_s - HORIZON_S) / BUCKET_S)
        expected = [sum(t for p, t, s in placed if p == position
                        and s // BUCKET_S >= oldest_epoch) for position in range(2)]
        got = dict(worker.totals(now_s))
        assert set(got) == {0, 1}
        assert got[0] == pytest.approx(expected[0], abs=1e-6)
        assert got[1] == pytest.approx(expected[1], abs=1e-6)


def _exit() -> None:
    return None


def test_a_dead_workers_slot_is_adopted_with_its_placements() -> None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_exit)
    child.start()
    child.join(30)
    assert child.pid is not None
    buffer = buffer_for(slots=1)
    dead = board(child.pid, buffer, slots=1)
    assert dead is not None
    SharedPlacements(dead, [0], HORIZON_S).add(0, 40.0, 100.0)
    # The one slot is taken by a live process: nobody else gets one.
    assert board(os.getpid(), buffer_for(slots=1), slots=1) is not None
    live_only = buffer_for(slots=1)
    assert board(os.getppid(), live_only, slots=1) is not None
    assert board(os.getpid(), live_only, slots=1) is None
    # The dead worker's slot goes to its successor, placements and all.
    successor = board(os.getpid(), buffer, slots=1)
    assert successor is not None
    shared = SharedPlacements(successor, [0], HORIZON_S)
    assert dict(shared.totals(101.0)) == {0: 40.0}
    shared.add(0, 2.0, 102.0)
    assert dict(shared.totals(103.0)) == {0: 42.0}


def _place_in_child(segment: str, replies: Connection) -> None:
    """Another worker: it places 300 tokens on "b", then reports what it sees."""
    index = SharedMemoryAffinityIndex(AffinityTable.attach(segment), namespace="m", ttl_s=60)
    shared = index.shared_placements(["a", "b"], 60.0)
    assert shared is not None
    now_s = time.monotonic()
    shared.add(1, 300.0, now_s)
    replies.send(dict(shared.totals(now_s)))
    replies.close()


def test_two_processes_share_placements_through_the_affinity_segment() -> None:
    segment = AffinitySegment(10_000, board_slots=3, board_entries=2)
    try:
        index = SharedMemoryAffinityIndex(AffinityTable.attach(segment.name), namespace="m",
                                          ttl_s=60)
        shared = index.shared_placements(["a", "b"], 60.0)
        assert shared is not None
        shared.add(0, 100.0, time.monotonic())
        seen_by_child = reply_from_spawned(_place_in_child, segment.name)
        assert seen_by_child == {0: 100.0, 1: 300.0}
        assert dict(shared.totals(time.monotonic())) == {0: 100.0, 1: 300.0}
    finally:
        segment.unlink()


def test_a_private_table_has_no_board() -> None:
    index = SharedMemoryAffinityIndex(AffinityTable.private(1_000), namespace="m", ttl_s=60)
    assert index.shared_placements(["a"], 60.0) is None


# -- two prefix_kv_aware workers --------------------------------------------------------------

class _Worker:
    """The shared index as worker ``pid`` sees it (its own slot of the board)."""

    def __init__(self, index: SharedMemoryAffinityIndex, pid: int | None) -> None:
        self._index, self._pid = index, pid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def shared_placements(self, deployment_ids: Sequence[str],
                          horizon_s: float) -> SharedPlacements | None:
        if self._pid is None:
            return None  # this worker keeps its placements to itself
        return self._index.shared_placements(deployment_ids, horizon_s, pid=self._pid)


def _image_like(number: int) -> bytes:
    """A ~4,700-token prompt of its own, like one photo and a question."""
    text = f"photo {number}: " + " ".join(f"p{number}x{i}" for i in range(2_900))
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})


def _first_placements(share: bool, order: Sequence[int], step_s: float = 1.0, *,
                      at_once: bool = False, prompts: Sequence[int] = range(12),
                      outcomes: list[str] | None = None) -> list[str]:
    """12 prompts of ~4.7k tokens, each asked once, ``step_s`` apart, through two workers
    (``order[n]`` takes the n-th), onto 2 replicas that hold 7 each: where each lands, in
    order. ``at_once``: prompts 2k and 2k + 1 are decided by the two workers at the same
    moment (both choose before either dispatches). ``prompts[n]``: the n-th request's
    prompt; ``outcomes``: gets each decision's outcome (cold, hit, spill)."""
    segment = AffinitySegment(100_000, board_slots=3, board_entries=2)
    try:
        clock = FakeClock(1_000.0)
        fleet: list[Deployment] = [deployment(f"r{i}", kv_capacity_tokens=7 * 4_800)
                                   for i in range(2)]
        workers = []
        for pid in (os.getpid(), os.getppid()):
            index = SharedMemoryAffinityIndex(AffinityTable.attach(segment.name),
                                              namespace="m", ttl_s=300, clock=clock)
            workers.append(PrefixKVAware(fleet, PrefixRoutingSettings(block_chars=64),
                                         _Worker(index, pid if share else None),  # type: ignore[arg-type]
                                         clock=clock))
        landed: list[str] = []
        group = 2 if at_once else 1
        for first in range(0, 12, group):
            clock.now_s += step_s
            decided = []
            for number in range(first, first + group):
                strategy = workers[order[number]]
                call = parse_call(_image_like(prompts[number]), "chat", models={"m"},
                                  max_image_bytes=1 << 20)
                asyncio.run(strategy.prepare(call))
                decision = strategy.choose(call, fleet)
                if outcomes is not None:
                    outcomes.append(str(decision.explanation["outcome"]))
                decided.append((strategy, call, decision.deployment))
            for strategy, call, where in decided:
                strategy.on_dispatched(call, where)
                if step_s >= 1.0:  # answered before the next; in a burst, all are in flight
                    strategy.on_first_token(call, where)
                    strategy.on_released(call, where, 1)
                landed.append(where.id)
        return landed
    finally:
        segment.unlink()


def test_two_workers_sharing_placements_split_cold_prefixes_as_one_would() -> None:
    rng = random.Random(0)
    orders = [[rng.randrange(2) for _ in range(12)] for _ in range(6)]
    for order in orders:
        assert sorted(Counter(_first_placements(True, order)).values()) == [6, 6], order
    # Each keeping its own count, a worker fills the replica the other already filled.
    unshared = [sorted(Counter(_first_placements(False, order)).values()) for order in orders]
    assert any(split != [6, 6] for split in unshared), unshared


def test_a_burst_within_one_refresh_sees_the_other_workers_placements() -> None:
    # 12 cold prompts 1 ms apart: no refresh in between, each decision counts what the other
    # worker placed since (added_by_others).
    rng = random.Random(1)
    for _ in range(6):
        order = [rng.randrange(2) for _ in range(12)]
        assert sorted(Counter(_first_placements(True, order, step_s=0.001)).values()) == [
            6, 6], order


def test_two_workers_deciding_at_once_see_each_others_choice() -> None:
    # Each pair of cold prompts is decided by the two workers at the same moment: a cold
    # placement is published at the decision (under a lock across workers), so the second
    # sees the first and takes the other replica, as one worker would.
    for step_s in (1.0, 0.001):
        landed = _first_placements(True, [0, 1] * 6, step_s, at_once=True)
        assert all(landed[k] != landed[k + 1] for k in range(0, 12, 2)), landed


def test_two_workers_taking_a_prompts_first_requests_at_once_place_it_once() -> None:
    # Each pair is one prompt's first two requests, matched by the two workers before
    # either decided: the second decision reads the index again under the workers' lock,
    # finds the first one's placement and follows it (a hit), instead of placing the same
    # prompt cold on the other replica too.
    outcomes: list[str] = []
    landed = _first_placements(True, [0, 1] * 6, 0.001, at_once=True,
                               prompts=[k // 2 for k in range(12)], outcomes=outcomes)
    assert all(landed[k] == landed[k + 1] for k in range(0, 12, 2)), landed
    assert outcomes == ["cold", "hit"] * 6
    assert sorted(Counter(landed).values()) == [6, 6]


def test_added_by_others_reports_growth_once() -> None:
    a, b = two_workers()
    assert dict(a.totals(1000.0)) == {0: 0.0, 1: 0.0}
    b.add(1, 40.0, 1000.01)
    b.add(1, 2.0, 1000.02)
    assert a.added_by_others() == [(1, 42.0)]
    assert a.added_by_others() == []  # already counted
    a.add(0, 5.0, 1000.03)  # its own: not the others'
    assert a.added_by_others() == []
