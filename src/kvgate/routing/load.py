"""How busy a deployment is, as routing sees it.

Two sources: the gateway's own in-flight count (exact, but only this process's requests) and,
when an engine publishes them, its queue from ``/metrics`` (``vllm:num_requests_running`` +
``vllm:num_requests_waiting``, every gateway's requests). The larger of the two is used, so
several gateway instances in front of one fleet still see each other's load.
"""

from __future__ import annotations

from typing import Protocol

from kvgate.core.deployment import Deployment


class LoadView(Protocol):
    def load(self, deployment: Deployment) -> float:
        """Requests the deployment is working on or queueing, as best known now."""
        ...


class InFlightLoad:
    """Load from the gateway's own in-flight counts, plus engine metrics when scraped."""

    def load(self, deployment: Deployment) -> float:
        stats = deployment.stats
        return max(stats.in_flight, stats.engine_running + stats.engine_waiting)
