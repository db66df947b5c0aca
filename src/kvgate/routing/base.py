"""The routing interface: given a request and the deployments that may take it, pick one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kvgate.core.deployment import Deployment, EngineUsage, RouteDecision

if TYPE_CHECKING:
    from kvgate.core.call import Call


class RoutingStrategy(Protocol):
    """Chooses one deployment per attempt.

    ``candidates`` is never empty and already excludes deployments tried earlier for this
    request and those whose circuit is open, so a strategy only ranks. ``choose`` runs on the
    event loop for every attempt: it must not block and should cost microseconds.

    The hooks after ``on_dispatched`` are optional work; :class:`StrategyDefaults` gives each a
    no-op, and the strategy's registry entry (:class:`kvgate.routing.StrategyEntry`) says which
    ones are real, so the composer wires only those and a plain strategy pays nothing for them.
    """

    name: str

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        """Return the deployment this attempt goes to."""
        ...

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        """Called once the attempt is committed to ``deployment`` (affinity bookkeeping)."""
        ...

    def on_first_token(self, call: Call, deployment: Deployment) -> None:
        """The attempt at ``deployment`` streamed its first token (its prefill is done)."""
        ...

    def on_released(self, call: Call, deployment: Deployment, output_tokens: int,
                    usage: EngineUsage | None = None) -> None:
        """The attempt at ``deployment`` ended, whatever the ending, after ``output_tokens``;
        called exactly once per ``on_dispatched``. ``usage``: the prompt's tokens and cached
        tokens as the engine reported them, None when it reported none."""
        ...

    async def prepare(self, call: Call) -> None:
        """Heavier per-request work (fingerprints, index look-ups), once before the first
        attempt; leaves its results in ``call.routing_state`` for ``choose``."""
        ...

    def start(self) -> None:
        """Start background work (e.g. following KV events); called on the running loop."""
        ...

    async def stop(self) -> None:
        """Stop the background work; called once at shutdown."""
        ...

    def describe(self) -> dict[str, dict[str, Any]]:
        """Live per-deployment state for ``/admin/stats``, per deployment id, JSON-ready."""
        ...

    def affinity_entries(self) -> int | None:
        """(deployment, block) pairs an affinity index tracks; -1 when the backend can't
        tell; None for strategies without one."""
        ...


class StrategyDefaults:
    """No-op optional hooks of :class:`RoutingStrategy`, for strategies to inherit."""

    def on_first_token(self, call: Call, deployment: Deployment) -> None:
        return None

    def on_released(self, call: Call, deployment: Deployment, output_tokens: int,
                    usage: EngineUsage | None = None) -> None:
        return None

    async def prepare(self, call: Call) -> None:
        return None

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, dict[str, Any]]:
        return {}

    def affinity_entries(self) -> int | None:
        return None
