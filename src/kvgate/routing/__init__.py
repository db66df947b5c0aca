"""Routing strategies, picked from a name-to-class registry once at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, DeploymentId, RouteDecision
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.base import RoutingStrategy
from kvgate.routing.cost import CheapestFirst
from kvgate.routing.latency import LowestLatency
from kvgate.routing.least_busy import LeastBusy
from kvgate.routing.load import InFlightLoad, LoadView
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.routing.prefix_kv_aware_v1 import PrefixKVAwareV1
from kvgate.routing.round_robin import RoundRobin
from kvgate.routing.weighted import Weighted


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """What a strategy may need beyond its deployments, built once per model at start-up."""

    #: Builds the model's affinity index (memory or Redis), only for strategies that use one.
    affinity_index: Callable[[], AffinityIndex]
    load: LoadView = field(default_factory=InFlightLoad)
    #: Seconds for the strategy's ledgers and fits: the gateway's monotonic clock, or a
    #: simulator's virtual one.
    clock: Callable[[], float] = time.monotonic
    #: Strategies may queue their bookkeeping after a decision off the request's path
    #: (:mod:`kvgate.routing.write_behind`): the gateway; a simulator reads state in line.
    write_behind: bool = False


#: Builds one model's strategy from its deployments, its effective settings and context.
StrategyFactory = Callable[[Sequence[Deployment], RoutingSettings, RoutingContext],
                           RoutingStrategy]


@dataclass(frozen=True, slots=True)
class StrategyEntry:
    """A strategy in the registry: how to build it and what it needs, so the composer wires
    each capability from these flags and never branches on a strategy's name."""

    factory: StrategyFactory
    #: Has per-request work before choosing: the failover stage awaits ``prepare``.
    prepares: bool = False
    #: Runs background work for the gateway's lifetime: ``start`` / ``stop`` are called.
    runs_in_background: bool = False
    #: Reads the engines' own load figures (vLLM ``/metrics``), scraped in the background.
    reads_engine_metrics: bool = False
    #: Keeps an affinity index (``RoutingContext.affinity_index``): workers share one.
    uses_affinity: bool = False
    #: Follows each attempt to its end (``on_first_token`` / ``on_released``): the attempt
    #: loop calls those hooks only for such strategies.
    observes_progress: bool = False


def _precise_kv(
    deployments: Sequence[Deployment], settings: RoutingSettings, context: RoutingContext
) -> RoutingStrategy:
    # Imported when chosen: ZMQ, Jinja2 and tokenizers are not needed by other strategies.
    from kvgate.routing.precise.strategy import PreciseKVAware

    return PreciseKVAware(deployments, settings, context.affinity_index(), clock=context.clock,
                          write_behind=context.write_behind)


STRATEGIES: dict[str, StrategyEntry] = {
    "round_robin": StrategyEntry(lambda deployments, settings, _: RoundRobin(
        deployments, settings)),
    "weighted": StrategyEntry(lambda deployments, settings, _: Weighted(deployments, settings)),
    "least_busy": StrategyEntry(lambda deployments, settings, _: LeastBusy(
        deployments, settings)),
    "latency": StrategyEntry(lambda deployments, settings, _: LowestLatency(
        deployments, settings)),
    "cost": StrategyEntry(lambda deployments, settings, _: CheapestFirst(deployments, settings)),
    "prefix_kv_aware": StrategyEntry(
        lambda deployments, settings, context: PrefixKVAware(
            deployments, settings.prefix, context.affinity_index(), clock=context.clock,
            write_behind=context.write_behind,
        ),
        prepares=True, reads_engine_metrics=True, uses_affinity=True, observes_progress=True,
    ),
    "prefix_kv_aware_v1": StrategyEntry(
        lambda deployments, settings, context: PrefixKVAwareV1(
            deployments, settings.prefix, context.affinity_index(), context.load
        ),
        prepares=True, reads_engine_metrics=True, uses_affinity=True,
    ),
    "precise_kv": StrategyEntry(
        _precise_kv, prepares=True, runs_in_background=True, reads_engine_metrics=True,
        uses_affinity=True, observes_progress=True,
    ),
}


def strategy_entry(name: str) -> StrategyEntry:
    """The registry entry for ``name``; ValueError naming the choices when there is none."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"routing strategy {name!r} is not available (have: {', '.join(sorted(STRATEGIES))})"
        ) from None


def build_strategy(
    name: str,
    deployments: Sequence[Deployment],
    settings: RoutingSettings,
    context: RoutingContext,
) -> RoutingStrategy:
    return strategy_entry(name).factory(deployments, settings, context)


__all__ = [
    "STRATEGIES",
    "Deployment",
    "DeploymentId",
    "RouteDecision",
    "RoutingContext",
    "RoutingStrategy",
    "StrategyEntry",
    "StrategyFactory",
    "build_strategy",
    "strategy_entry",
]
