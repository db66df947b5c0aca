"""Send each attempt to the cheapest candidate that has room, overflowing up the price list.

A deployment is saturated when it declares ``max_concurrency`` and has that many requests in
flight; saturated ones are passed over for the next cheapest. Deployments at the same price
share the traffic (fewest in flight first), so two free vLLM replicas are both used. When every
candidate is saturated the least overloaded one (in flight relative to its limit) is taken:
queueing at an upstream beats refusing a request the fleet could serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.base import StrategyDefaults

if TYPE_CHECKING:
    from kvgate.core.call import Call


def price_per_1k(deployment: Deployment) -> float:
    """The price the ranking uses: input plus output price per 1k tokens.

    NOTE: this assumes as many output tokens as input tokens. Weighting by each request's
    prompt size would re-rank deployments whose input and output prices disagree, at the cost
    of measuring every prompt on the hot path; operators who care can set prices accordingly.
    """
    settings = deployment.settings
    return settings.cost_per_1k_input + settings.cost_per_1k_output


class CheapestFirst(StrategyDefaults):
    name = "cost"

    def __init__(self, deployments: Sequence[Deployment], settings: RoutingSettings) -> None:
        self._price_per_1k = {d: price_per_1k(d) for d in deployments}
        #: Config order, the last tie-breaker, so equal choices are stable.
        self._rank = {d: index for index, d in enumerate(deployments)}

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        price_of, rank_of = self._price_per_1k, self._rank
        best: Deployment | None = None
        best_key: tuple[float, float, int] = (0.0, 0.0, 0)
        overloaded: Deployment | None = None
        overloaded_key: tuple[float, float, int] = (0.0, 0.0, 0)
        cheapest_saturated = float("inf")
        for deployment in candidates:
            price = price_of[deployment]
            in_flight = deployment.stats.in_flight
            limit = deployment.settings.max_concurrency
            if limit is not None and in_flight >= limit:
                cheapest_saturated = min(cheapest_saturated, price)
                key = (in_flight / limit, price, rank_of[deployment])
                if overloaded is None or key < overloaded_key:
                    overloaded, overloaded_key = deployment, key
                continue
            key = (price, float(in_flight), rank_of[deployment])
            if best is None or key < best_key:
                best, best_key = deployment, key
        if best is None:
            assert overloaded is not None  # candidates is never empty
            return RouteDecision(overloaded, {
                "strategy": self.name, "price_per_1k": overloaded_key[1], "saturated": True,
            })
        return RouteDecision(best, {
            "strategy": self.name,
            "price_per_1k": best_key[0],
            "overflow": cheapest_saturated < best_key[0],
        })

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
