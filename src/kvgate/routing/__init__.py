"""Routing strategies, picked from a name-to-class registry once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvgate.routing.base import RouteDecision, RoutingStrategy
from kvgate.routing.deployment import Deployment, DeploymentId
from kvgate.routing.round_robin import RoundRobin

StrategyFactory = Callable[[Sequence[Deployment]], RoutingStrategy]

STRATEGIES: dict[str, StrategyFactory] = {
    "round_robin": RoundRobin,
}


def build_strategy(name: str, deployments: Sequence[Deployment]) -> RoutingStrategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"routing strategy {name!r} is not available (have: {', '.join(sorted(STRATEGIES))})"
        ) from None
    return factory(deployments)


__all__ = [
    "STRATEGIES",
    "Deployment",
    "DeploymentId",
    "RouteDecision",
    "RoutingStrategy",
    "build_strategy",
]
