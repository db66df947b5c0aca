from __future__ import annotations

from collections import Counter

import pytest

from kvgate.routing.least_busy import LeastBusy
from tests.routing.factories import call, deployment, routing


def test_picks_fewest_in_flight() -> None:
    fleet = [deployment(n) for n in "abc"]
    for d, load in zip(fleet, (4, 1, 3), strict=True):
        d.stats.in_flight = load
    strategy = LeastBusy(fleet, routing())
    assert {strategy.choose(call(), fleet).deployment.id for _ in range(50)} == {"b"}


def test_ties_are_shared_evenly_even_next_to_a_busy_deployment() -> None:
    # A rotating start offset would hand c's turns to a (a: 2/3, b: 1/3); sampling does not.
    a, b, c = deployment("a"), deployment("b"), deployment("c")
    c.stats.in_flight = 5
    strategy = LeastBusy([a, b, c], routing(seed=3))
    counts = Counter(strategy.choose(call(), [a, b, c]).deployment.id for _ in range(6000))
    assert set(counts) == {"a", "b"}
    assert counts["a"] / 6000 == pytest.approx(0.5, abs=0.03)


def test_spreads_a_burst_when_the_caller_counts_in_flight() -> None:
    fleet = [deployment(n) for n in "abcd"]
    strategy = LeastBusy(fleet, routing())
    for _ in range(40):  # 40 concurrent requests, none finishing: 10 each.
        strategy.choose(call(), fleet).deployment.stats.in_flight += 1
    assert [d.stats.in_flight for d in fleet] == [10, 10, 10, 10]
