from __future__ import annotations

from collections import Counter

from kvgate.core.deployment import Deployment
from kvgate.routing.cost import CheapestFirst
from tests.routing.factories import call, deployment, routing


def priced() -> list[Deployment]:
    return [
        deployment("hosted", cost_per_1k_input=0.005, cost_per_1k_output=0.015),
        deployment("cheap", cost_per_1k_input=0.0005, cost_per_1k_output=0.0015,
                   max_concurrency=2),
        deployment("mid", cost_per_1k_input=0.001, cost_per_1k_output=0.002, max_concurrency=3),
    ]


def test_cheapest_healthy_takes_everything_while_it_has_room() -> None:
    fleet = priced()
    strategy = CheapestFirst(fleet, routing())
    picks = Counter(strategy.choose(call(), fleet).deployment.id for _ in range(100))
    assert picks == {"cheap": 100}
    # Ejected (not a candidate): the next cheapest.
    assert strategy.choose(call(), [fleet[0], fleet[2]]).deployment.id == "mid"


def test_overflow_up_the_price_list_as_each_tier_saturates() -> None:
    fleet = priced()
    strategy = CheapestFirst(fleet, routing())
    order = []
    for _ in range(8):  # concurrent requests that have not finished
        decision = strategy.choose(call(), fleet)
        decision.deployment.stats.in_flight += 1
        order.append((decision.deployment.id, decision.explanation.get("overflow")))
    assert order == [("cheap", False)] * 2 + [("mid", True)] * 3 + [("hosted", True)] * 3


def test_all_saturated_takes_the_least_overloaded() -> None:
    a = deployment("a", cost_per_1k_input=0.001, max_concurrency=2)
    b = deployment("b", cost_per_1k_input=0.002, max_concurrency=10)
    a.stats.in_flight, b.stats.in_flight = 3, 11  # 150% vs 110% of their limits
    decision = CheapestFirst([a, b], routing()).choose(call(), [a, b])
    assert decision.deployment is b and decision.explanation["saturated"] is True


def test_equal_prices_share_by_load() -> None:
    fleet = [deployment(n) for n in "abc"]  # all free, no limits
    strategy = CheapestFirst(fleet, routing())
    for _ in range(30):
        strategy.choose(call(), fleet).deployment.stats.in_flight += 1
    assert [d.stats.in_flight for d in fleet] == [10, 10, 10]
