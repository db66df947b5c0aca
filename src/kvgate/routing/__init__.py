"""Routing strategies, picked from a name-to-class registry once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvgate.config.schema import RoutingSettings
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.base import RouteDecision, RoutingStrategy
from kvgate.routing.cost import CheapestFirst
from kvgate.routing.deployment import Deployment, DeploymentId
from kvgate.routing.latency import LowestLatency
from kvgate.routing.least_busy import LeastBusy
from kvgate.routing.load import InFlightLoad, LoadView
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.routing.round_robin import RoundRobin
from kvgate.routing.weighted import Weighted


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """What a strategy may need beyond its deployments, built once per model at start-up."""

    #: Builds the model's affinity index (memory or Redis), only for strategies that use one.
    affinity_index: Callable[[], AffinityIndex]
    load: LoadView = field(default_factory=InFlightLoad)


#: Builds one model's strategy from its deployments, its effective settings and context.
StrategyFactory = Callable[[Sequence[Deployment], RoutingSettings, RoutingContext],
                           RoutingStrategy]

def _precise_kv(
    deployments: Sequence[Deployment], settings: RoutingSettings, context: RoutingContext
) -> RoutingStrategy:
    # Imported when chosen: ZMQ, Jinja2 and tokenizers are not needed by other strategies.
    from kvgate.routing.precise.strategy import PreciseKVAware

    return PreciseKVAware(deployments, settings, context.affinity_index(), context.load)


STRATEGIES: dict[str, StrategyFactory] = {
    "round_robin": lambda deployments, settings, _: RoundRobin(deployments, settings),
    "weighted": lambda deployments, settings, _: Weighted(deployments, settings),
    "least_busy": lambda deployments, settings, _: LeastBusy(deployments, settings),
    "latency": lambda deployments, settings, _: LowestLatency(deployments, settings),
    "cost": lambda deployments, settings, _: CheapestFirst(deployments, settings),
    "prefix_kv_aware": lambda deployments, settings, context: PrefixKVAware(
        deployments, settings.prefix, context.affinity_index(), context.load
    ),
    "precise_kv": _precise_kv,
}


def build_strategy(
    name: str,
    deployments: Sequence[Deployment],
    settings: RoutingSettings,
    context: RoutingContext,
) -> RoutingStrategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"routing strategy {name!r} is not available (have: {', '.join(sorted(STRATEGIES))})"
        ) from None
    return factory(deployments, settings, context)


__all__ = [
    "STRATEGIES",
    "Deployment",
    "DeploymentId",
    "RouteDecision",
    "RoutingContext",
    "RoutingStrategy",
    "StrategyFactory",
    "build_strategy",
]
