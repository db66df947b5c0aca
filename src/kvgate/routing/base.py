"""The routing interface: given a request and the deployments that may take it, pick one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kvgate.routing.deployment import Deployment

if TYPE_CHECKING:
    from kvgate.gateway.call import Call


@dataclass(slots=True)
class RouteDecision:
    deployment: Deployment
    #: Why this deployment: goes to the response's ``kvgate.route`` object as is.
    explanation: dict[str, Any] = field(default_factory=dict)


class RoutingStrategy(Protocol):
    """Chooses one deployment per attempt.

    ``candidates`` is never empty and already excludes deployments tried earlier for this
    request and those whose circuit is open, so a strategy only ranks. ``choose`` runs on the
    event loop for every attempt: it must not block and should cost microseconds.
    """

    name: str

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        """Return the deployment this attempt goes to."""
        ...

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        """Called once the attempt is committed to ``deployment`` (affinity bookkeeping)."""
        ...


class PreparingStrategy(RoutingStrategy, Protocol):
    """A strategy that needs I/O or heavier work once per request before choosing.

    ``prepare`` runs once, before the first attempt, and leaves its results in
    ``call.routing_state`` for ``choose``, which stays synchronous and cheap. The failover stage
    looks for ``prepare`` once at start-up, so strategies without it pay nothing.
    """

    async def prepare(self, call: Call) -> None: ...


class BackgroundStrategy(RoutingStrategy, Protocol):
    """A strategy with background work (e.g. following KV events) for the gateway's lifetime.

    The gateway looks for ``start`` once at start-up and calls it on the running event loop;
    ``stop`` at shutdown.
    """

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class DescribedStrategy(RoutingStrategy, Protocol):
    """A strategy with live per-deployment state for ``/admin/stats``."""

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per deployment id, JSON-ready."""
        ...
