"""``GET /admin/tenants/{name}`` (spend, reservations, what is left, limits, per named key)
and ``POST /admin/tenants/{name}/reset`` (renews the current budget window and buckets).
Admin key required, as for ``/admin/stats``."""

from __future__ import annotations

from typing import Any

import orjson

from kvgate.api.admin import admin_refusal
from kvgate.errors import error_body
from kvgate.gateway.compose import Gateway
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.stage import LimitsStage
from kvgate.limits.store import LimitBackendError, LimitStore

PREFIX = "/admin/tenants/"


async def handle(gateway: Gateway, method: str, path: str,
                 authorization: bytes | None) -> tuple[int, bytes]:
    """The status and JSON body answering an admin tenants request."""
    refusal = admin_refusal(gateway.settings, authorization)
    if refusal is not None:
        return 401, refusal
    name, _, action = path.removeprefix(PREFIX).partition("/")
    if not any(t.name == name for t in gateway.settings.tenants):
        return 404, error_body(f"no tenant '{name}'", "invalid_request_error",
                               "tenant_not_found", None)
    if (method, action) not in (("GET", ""), ("POST", "reset")):
        return 405, error_body(f"method {method} not allowed on {path}",
                               "invalid_request_error", "not_found", None)
    stage = gateway.stages.get("limits")
    limits = stage if isinstance(stage, LimitsStage) else None
    if limits is None:  # no tenant has limits: nothing to report or reset
        return 200, orjson.dumps({"name": name, "models": None, "limits": None, "keys": {}})
    policy, keys = limits.policies_of(name)
    try:
        if action == "reset":
            for each in (policy, *keys.values()):
                if each is not None:
                    await limits.store.reset(each)
        report: dict[str, Any] = {
            "name": name, "models": limits.allowed_models(name),
            **await _figures(limits.store, policy),
            "keys": {key: await _figures(limits.store, p) for key, p in keys.items()},
        }
    except LimitBackendError as exc:
        return 503, error_body(f"limits store unreachable: {exc}", "server_error",
                               "limits_unavailable", None)
    if action == "reset":
        report["reset"] = True
    return 200, orjson.dumps(report)


async def _figures(store: LimitStore, policy: TenantPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {"limits": None}
    usage = await store.usage(policy)
    budget = policy.budget_usd
    return {
        "limits": {"rpm": policy.rpm, "tpm": policy.tpm, "budget_usd": budget,
                   "budget_window": policy.budget_window},
        "window": usage.window,
        "window_ends_at": usage.window_ends_s,
        "spent_usd": round(usage.spent_usd, 9),
        "reserved_usd": round(usage.reserved_usd, 9),
        "reservations": usage.reservations,
        "remaining_usd": (None if budget is None else
                          round(max(0.0, budget - usage.spent_usd - usage.reserved_usd), 9)),
        "requests_left": None if usage.requests_left is None else round(usage.requests_left, 3),
        "tokens_left": None if usage.tokens_left is None else round(usage.tokens_left, 3),
    }
