"""The ``/admin/stats`` view: live routing state per deployment."""

from __future__ import annotations

from typing import Any

from kvgate.auth.keys import is_admin
from kvgate.config.schema import Settings
from kvgate.errors import error_body
from kvgate.gateway.compose import Gateway


def admin_refusal(settings: Settings, authorization: bytes | None) -> bytes | None:
    """The 401 body for an admin request without the admin key, when the admin API is locked
    (an admin key is set, or tenants exist); None when the request may proceed."""
    locked = bool(settings.tenants) or settings.server.admin_key is not None
    if locked and not is_admin(authorization, settings.server.admin_key):
        return error_body("admin key required", "authentication_error", "admin_only", None)
    return None


def stats(gateway: Gateway) -> dict[str, Any]:
    models = []
    for route in gateway.routes.values():
        kv_state = route.strategy.describe()
        deployments = []
        for deployment in route.deployments:
            s = deployment.stats
            settings = deployment.settings
            deployments.append({
                "id": deployment.id,
                "provider": deployment.provider_name,
                "model": deployment.upstream_model,
                "in_flight": s.in_flight,
                "max_concurrency": settings.max_concurrency,
                "weight": settings.weight,
                # Attempts dispatched, of which ``failures_total`` failed.
                "requests_total": s.requests_total,
                "failures_total": s.failures_total,
                "cost_usd_total": round(s.cost_usd_total, 6),
                "ewma_ttft_ms": _rounded(s.ewma_ttft_ms),
                "ewma_ms_per_token": _rounded(s.ewma_ms_per_token),
                "circuit": gateway.breakers.describe(deployment),
            })
            if deployment.id in kv_state:
                # precise_kv: mode (precise / degraded / approximate), blocks tracked, last
                # event sequence, lag.
                deployments[-1]["kv_cache"] = kv_state[deployment.id]
        models.append({
            "name": route.name,
            "strategy": route.strategy.name,
            "max_attempts": route.max_attempts,
            # prefix_kv_aware: the affinity table's size in (deployment, block) entries.
            "affinity_entries": route.strategy.affinity_entries(),
            "deployments": deployments,
        })
    return {
        "models": models,
        # exact_entries is -1 with the Redis backend (not counted per request).
        "cache": gateway.describe_stage("cache") or {"exact_entries": None},
        # Tenants with limits: their limits and what was left as of their latest request.
        "tenants": gateway.describe_stage("limits") or {},
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
