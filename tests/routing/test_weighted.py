from __future__ import annotations

from collections import Counter
from itertools import groupby

from kvgate.routing.weighted import Weighted
from tests.routing.factories import call, deployment, routing


def test_smooth_sequence_matches_nginx() -> None:
    fleet = [deployment("a", weight=5), deployment("b", weight=1), deployment("c", weight=1)]
    strategy = Weighted(fleet, routing())
    picks = "".join(strategy.choose(call(), fleet).deployment.id for _ in range(7))
    assert picks == "aabacaa"


def test_exact_proportions_and_no_long_streaks() -> None:
    weights = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    fleet = [deployment(name, weight=w) for name, w in weights.items()]
    strategy = Weighted(fleet, routing())
    picks = [strategy.choose(call(), fleet).deployment.id for _ in range(650)]
    counts = Counter(picks)
    # 650 picks is 100 full cycles of the 6.5 total weight: exact shares, not approximate.
    assert counts == {"a": 300, "b": 200, "c": 100, "d": 50}
    # Smooth: the heaviest (46% of traffic) never runs more than twice in a row.
    assert max(len(list(run)) for _, run in groupby(picks)) <= 2


def test_ejected_deployment_turns_are_shared_by_the_rest_in_proportion() -> None:
    a, b, c = deployment("a", weight=2), deployment("b", weight=1), deployment("c", weight=3)
    strategy = Weighted([a, b, c], routing())
    picks = Counter(strategy.choose(call(), [a, b]).deployment.id for _ in range(300))
    assert picks == {"a": 200, "b": 100}
    # c back in rotation: from then on full cycles give exact 2:1:3 shares again.
    picks = Counter(strategy.choose(call(), [a, b, c]).deployment.id for _ in range(600))
    assert picks == {"a": 200, "b": 100, "c": 300}
