"""Routing strategies, picked from a name-to-class registry once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvgate.config.schema import RoutingSettings
from kvgate.routing.base import RouteDecision, RoutingStrategy
from kvgate.routing.cost import CheapestFirst
from kvgate.routing.deployment import Deployment, DeploymentId
from kvgate.routing.latency import LowestLatency
from kvgate.routing.least_busy import LeastBusy
from kvgate.routing.round_robin import RoundRobin
from kvgate.routing.weighted import Weighted

#: Builds one model's strategy from its deployments and its effective routing settings.
StrategyFactory = Callable[[Sequence[Deployment], RoutingSettings], RoutingStrategy]

STRATEGIES: dict[str, StrategyFactory] = {
    "round_robin": RoundRobin,
    "weighted": Weighted,
    "least_busy": LeastBusy,
    "latency": LowestLatency,
    "cost": CheapestFirst,
}


def build_strategy(
    name: str, deployments: Sequence[Deployment], settings: RoutingSettings
) -> RoutingStrategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"routing strategy {name!r} is not available (have: {', '.join(sorted(STRATEGIES))})"
        ) from None
    return factory(deployments, settings)


__all__ = [
    "STRATEGIES",
    "Deployment",
    "DeploymentId",
    "RouteDecision",
    "RoutingStrategy",
    "StrategyFactory",
    "build_strategy",
]
