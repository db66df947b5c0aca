"""Rotation over the deployments, skipping those that are not candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.base import StrategyDefaults

if TYPE_CHECKING:
    from kvgate.core.call import Call


class RoundRobin(StrategyDefaults):
    """Each pick is the first candidate at or after the cursor in the model's deployment ring.

    NOTE: the cursor is a position in the full list, not an index into ``candidates``. Indexing
    a list that shrinks during failover (tried and ejected deployments leave it) makes the
    rotation jump: with ``[dead, err, ok]`` a retry after ``dead`` would land on ``ok`` every
    time and never on ``err``. On the ring a retry goes to the next deployment in turn, and a
    missing deployment's turn passes to the one after it only once per lap.
    """

    name = "round_robin"

    def __init__(self, deployments: Sequence[Deployment], settings: RoutingSettings) -> None:
        self._position = {d: index for index, d in enumerate(deployments)}
        self._ring_size = max(1, len(deployments))
        self._cursor = 0

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        position, cursor, ring_size = self._position, self._cursor, self._ring_size
        best = candidates[0]
        best_distance = ring_size
        for deployment in candidates:
            distance = (position[deployment] - cursor) % ring_size
            if distance < best_distance:
                best, best_distance = deployment, distance
        self._cursor = (position[best] + 1) % ring_size
        return RouteDecision(best, {"strategy": self.name})

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
