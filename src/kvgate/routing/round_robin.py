"""Plain rotation over the healthy candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.routing.base import RouteDecision
from kvgate.routing.deployment import Deployment

if TYPE_CHECKING:
    from kvgate.gateway.call import Call


class RoundRobin:
    name = "round_robin"

    def __init__(self, deployments: Sequence[Deployment], settings: RoutingSettings) -> None:
        self._next_index = 0

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        index = self._next_index % len(candidates)
        self._next_index = index + 1
        return RouteDecision(candidates[index], {"strategy": self.name})

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
