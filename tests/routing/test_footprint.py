"""PlacedTokens: tokens placed per replica within the horizon, and the least KV headroom it
keeps up to date so that a decision need not take it over the fleet."""

from __future__ import annotations

import math
import random

from kvgate.routing.footprint import PlacedTokens


def least_by_hand(placed: PlacedTokens, capacity: list[float]) -> float:
    return min(c - t for c, t in zip(capacity, placed.totals(), strict=True))


def test_placements_expire_after_the_horizon() -> None:
    placed = PlacedTokens(2, horizon_s=64.0)
    placed.add(0, 100.0, now_s=0.0)
    placed.add(0, 50.0, now_s=30.0)
    placed.add(1, 10.0, now_s=30.0)
    placed.add(1, -5.0, now_s=31.0)  # nothing placed: ignored
    assert list(placed.totals()) == [150.0, 10.0]
    placed.expire(now_s=65.0)
    assert list(placed.totals()) == [50.0, 10.0]
    placed.expire(now_s=100.0)
    assert list(placed.totals()) == [0.0, 0.0]


def test_least_headroom_is_unknown_until_sizes_are_set() -> None:
    placed = PlacedTokens(3, horizon_s=10.0)
    placed.add(1, 1_000.0, now_s=0.0)
    assert math.isinf(placed.least_headroom)
    placed.set_capacity([math.inf, 5_000.0, math.inf])
    assert placed.least_headroom == 4_000.0


def test_least_headroom_follows_adds_expiry_and_new_sizes() -> None:
    rng = random.Random(7)
    capacity = [20_000.0, 50_000.0, math.inf, 8_000.0]
    placed = PlacedTokens(len(capacity), horizon_s=30.0)
    placed.set_capacity(capacity)
    now_s = 0.0
    for step in range(2_000):
        now_s += rng.random()
        placed.add(rng.randrange(len(capacity)), rng.choice([0.0, 64.0, 700.0, 4_096.0]), now_s)
        if step % 37 == 0:
            placed.expire(now_s)
        if step % 500 == 499:
            capacity = [c * 1.5 if math.isfinite(c) else c for c in capacity]
            placed.set_capacity(capacity)
        assert placed.least_headroom == least_by_hand(placed, capacity)


def test_a_reserved_placement_is_counted_once_by_the_dispatch_that_follows() -> None:
    placed = PlacedTokens(2, 60.0)
    placed.reserve(0, 100.0, 1.0)
    assert list(placed.totals()) == [100.0, 0.0]  # visible at the decision
    placed.add_dispatched(0, 100.0, 1.0)
    assert list(placed.totals()) == [100.0, 0.0]
    placed.add_dispatched(0, 50.0, 2.0)  # no reservation left: counted
    assert list(placed.totals()) == [150.0, 0.0]
    # A reservation the dispatch did not follow stays (it expires with its bucket).
    placed.reserve(1, 30.0, 3.0)
    placed.add_dispatched(0, 20.0, 3.0)
    assert list(placed.totals()) == [170.0, 30.0]
