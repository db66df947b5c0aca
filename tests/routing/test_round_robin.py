from __future__ import annotations

from collections import Counter

from kvgate.routing.round_robin import RoundRobin
from tests.routing.factories import call, deployment, routing


def test_rotates_evenly() -> None:
    fleet = [deployment(n) for n in "abc"]
    strategy = RoundRobin(fleet, routing())
    picks = [strategy.choose(call(), fleet).deployment.id for _ in range(9)]
    assert picks == list("abcabcabc")
    assert Counter(picks) == {"a": 3, "b": 3, "c": 3}
