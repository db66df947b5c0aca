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


def test_a_retry_goes_to_the_next_deployment_in_turn() -> None:
    dead, err, ok = deployment("dead"), deployment("err"), deployment("ok")
    strategy = RoundRobin([dead, err, ok], routing())
    assert strategy.choose(call(), [dead, err, ok]).deployment is dead
    assert strategy.choose(call(), [err, ok]).deployment is err  # not ok: no jump
    assert strategy.choose(call(), [ok]).deployment is ok
    assert strategy.choose(call(), [dead, err, ok]).deployment is dead


def test_an_ejected_deployment_does_not_skew_the_others() -> None:
    fleet = [deployment(n) for n in "abcd"]
    strategy = RoundRobin(fleet, routing())
    picks = Counter(strategy.choose(call(), fleet[1:]).deployment.id for _ in range(300))
    assert picks == {"b": 100, "c": 100, "d": 100}
