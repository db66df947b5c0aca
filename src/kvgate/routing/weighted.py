"""Smooth weighted round robin (nginx's algorithm) over the deployments' ``weight``.

Each pick adds every candidate's weight to its running score, takes the highest score and
subtracts the candidates' total weight from the winner. Over any run of ``sum(weights)`` picks
each deployment is chosen exactly ``weight`` times, and the picks are interleaved (5:1:1 gives
``a a b a c a a``) instead of bursting, so a heavy deployment never takes a long streak.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.base import StrategyDefaults

if TYPE_CHECKING:
    from kvgate.core.call import Call


class Weighted(StrategyDefaults):
    name = "weighted"

    def __init__(self, deployments: Sequence[Deployment], settings: RoutingSettings) -> None:
        #: Running score per deployment; keys fixed at start-up, so choose() never allocates one.
        self._current_weight: dict[Deployment, float] = {d: 0.0 for d in deployments}

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        # NOTE: only candidates take part, so while a deployment is ejected or already tried
        # its score stands still and the others share its turns in their own proportion.
        current = self._current_weight
        total_weight = 0.0
        best = candidates[0]
        best_score = float("-inf")
        for deployment in candidates:
            weight = deployment.settings.weight
            total_weight += weight
            score = current.get(deployment, 0.0) + weight
            current[deployment] = score
            if score > best_score:
                best, best_score = deployment, score
        current[best] = best_score - total_weight
        return RouteDecision(best, {"strategy": self.name, "weight": best.settings.weight})

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
