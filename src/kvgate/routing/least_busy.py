"""Send each attempt to the candidate with the fewest requests in flight."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.base import StrategyDefaults

if TYPE_CHECKING:
    from kvgate.core.call import Call


class LeastBusy(StrategyDefaults):
    """Fewest in flight wins; ties are broken uniformly at random.

    NOTE: ties are the common case (an idle fleet is all zeros). Taking the first tied
    candidate would send every quiet-time request to the same deployment, and rotating a start
    offset is skewed whenever one candidate is busy (the deployment after it inherits its
    turns), so ties are settled by reservoir sampling: one random draw per tied candidate, no
    list built.
    """

    name = "least_busy"

    def __init__(self, deployments: Sequence[Deployment], settings: RoutingSettings) -> None:
        self._rng = random.Random(settings.seed)

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        random_fraction = self._rng.random
        best = candidates[0]
        fewest = best.stats.in_flight
        num_tied = 0
        for deployment in candidates:
            in_flight = deployment.stats.in_flight
            if in_flight < fewest:
                best, fewest, num_tied = deployment, in_flight, 1
            elif in_flight == fewest:
                num_tied += 1
                # Keeps each of the k tied candidates with probability 1/k.
                if num_tied == 1 or random_fraction() * num_tied < 1.0:
                    best = deployment
        return RouteDecision(best, {"strategy": self.name, "in_flight": fewest})

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
