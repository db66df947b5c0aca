"""Every registered strategy honours the RoutingStrategy contract."""

from __future__ import annotations

import pytest

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import EngineUsage
from kvgate.routing import STRATEGIES, build_strategy
from tests.routing.factories import call, context, deployment, prepared, routing

NAMES = sorted(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_always_picks_one_of_the_candidates(name: str) -> None:
    fleet = [deployment(f"d{i}", weight=i + 1, cost_per_1k_input=i) for i in range(4)]
    strategy = build_strategy(name, fleet, routing(), context())
    assert strategy.name == name
    for subset in (fleet, fleet[1:], fleet[2:3], [fleet[3], fleet[0]]):
        for stream in (False, True):
            decision = strategy.choose(prepared(strategy, call(stream=stream)), subset)
            assert decision.deployment in subset
            assert decision.explanation["strategy"] == name
            strategy.on_dispatched(prepared(strategy, call()), decision.deployment)


@pytest.mark.parametrize("name", NAMES)
def test_every_deployment_is_reachable(name: str) -> None:
    """No strategy starves a deployment when it is the only candidate left (failover)."""
    fleet = [deployment(f"d{i}", cost_per_1k_input=i) for i in range(3)]
    strategy = build_strategy(name, fleet, routing(), context())
    for member in fleet:
        assert strategy.choose(prepared(strategy, call()), [member]).deployment is member


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_choices(name: str) -> None:
    def picks() -> list[str]:
        fleet = [deployment(f"d{i}", weight=2 if i else 1) for i in range(5)]
        strategy = build_strategy(name, fleet, routing(seed=11), context())
        return [strategy.choose(prepared(strategy, call()), fleet).deployment.id for _ in range(50)]

    assert picks() == picks()


def test_unknown_strategy_names_what_is_available() -> None:
    with pytest.raises(ValueError, match=r"not available.*round_robin"):
        build_strategy("nope", [deployment("a")], RoutingSettings(), context())


def test_all_simple_strategies_of_the_spec_are_registered() -> None:
    assert {"round_robin", "weighted", "least_busy", "latency", "cost"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_the_progress_hooks_accept_every_ending_and_leave_nothing_behind(name: str) -> None:
    """first token then release, release alone (blocking or abandoned), and hooks for a call
    the strategy never prepared: none raises, and a strategy that follows attempts
    (``observes_progress``) ends with an empty ledger."""
    import json

    fleet = [deployment(f"d{i}") for i in range(3)]
    strategy = build_strategy(name, fleet, routing(), context())
    for ending in range(6):
        attempt = prepared(strategy, call(stream=ending % 2 == 0))
        chosen = strategy.choose(attempt, fleet).deployment
        strategy.on_dispatched(attempt, chosen)
        if ending % 3 == 0:
            strategy.on_first_token(attempt, chosen)
        # With and without the engine's usage (nothing cached, some, all, not reported).
        strategy.on_released(attempt, chosen, 0 if ending == 5 else 7,
                             (EngineUsage(40, 0), EngineUsage(40, 20), EngineUsage(9, 9),
                              None)[ending % 4])
    stranger = call()  # never prepared: no routing state
    strategy.on_first_token(stranger, fleet[0])
    strategy.on_released(stranger, fleet[0], 3, EngineUsage(8, 2))
    described = strategy.describe()
    json.dumps(described)  # JSON-ready for /admin/stats
    if STRATEGIES[name].observes_progress:
        assert {d.id for d in fleet} <= set(described)
        for figures in described.values():
            assert figures["waiting_requests"] == 0 and figures["decoding_requests"] == 0
            assert figures["queued_prefill_tokens"] == 0
            assert figures["resident_tokens"] == 0
