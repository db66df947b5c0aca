"""The circuit-breaker interface failover consults before and after each attempt."""

from __future__ import annotations

from typing import Protocol

from kvgate.routing.deployment import Deployment


class BreakerBoard(Protocol):
    """Per-deployment circuit state. All methods are synchronous and cheap (no I/O)."""

    def allows(self, deployment: Deployment) -> bool:
        """True when an attempt may go to ``deployment`` now (closed, or a half-open probe)."""
        ...

    def record_success(self, deployment: Deployment) -> None: ...

    def record_failure(self, deployment: Deployment) -> None: ...

    def state_code(self, deployment: Deployment) -> int:
        """0 closed, 1 half-open, 2 open (the metric's encoding)."""
        ...

    def retry_after_s(self, deployments: list[Deployment]) -> float:
        """Seconds until the first of ``deployments`` may be tried again."""
        ...

    def describe(self, deployment: Deployment) -> dict[str, object]:
        """State for /admin/stats: ``state`` and ``cooldown_left_s`` at least."""
        ...


class NoBreaker:
    """Every deployment always allowed: used when circuit breaking is switched off."""

    def allows(self, deployment: Deployment) -> bool:
        return True

    def record_success(self, deployment: Deployment) -> None:
        return None

    def record_failure(self, deployment: Deployment) -> None:
        return None

    def state_code(self, deployment: Deployment) -> int:
        return 0

    def retry_after_s(self, deployments: list[Deployment]) -> float:
        return 0.0

    def describe(self, deployment: Deployment) -> dict[str, object]:
        return {"state": "closed", "cooldown_left_s": 0.0}
