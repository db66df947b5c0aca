"""Tenants, their API keys and the limits store: the ``tenants`` and ``limits`` sections.

Kept out of ``schema.py`` (which stays under 400 lines); ``schema.py`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    # NOTE: the same base as schema.py's; repeated here because schema.py imports this module.
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimitSettings(_Frozen):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class BudgetSettings(_Frozen):
    usd: float = Field(gt=0)
    window: Literal["daily", "monthly"] | int = "monthly"


class ApiKeySettings(_Frozen):
    """A key with a name and, optionally, its own limits on top of its tenant's."""

    key: str
    #: Shown in refusals, ``/admin/tenants/{name}`` and store keys; unique within the tenant.
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    rate_limit: RateLimitSettings | None = None
    budget: BudgetSettings | None = None


class TenantSettings(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: Plain keys, ``sha256:<hex>`` digests, or objects with a name and per-key limits.
    api_keys: list[str | ApiKeySettings] = Field(min_length=1)
    rate_limit: RateLimitSettings | None = None
    budget: BudgetSettings | None = None
    #: Logical models this tenant may call; None = all of them (others get 403).
    models: list[str] | None = None


class LimitsSettings(_Frozen):
    """Where limits live and how a request's worst-case cost is estimated at admission."""

    backend: Literal["memory", "redis"] = "memory"
    #: Redis unreachable: admit without limits (fail_open) or refuse with 503 (fail_closed).
    on_backend_error: Literal["fail_open", "fail_closed"] = "fail_open"
    #: Output bound of a request without max_tokens, for deployments that set no
    #: ``max_output_tokens``.
    default_max_output_tokens: int = Field(4096, ge=1)
    #: Prompt characters per token for the admission estimate; lower is safer (1 is a bound
    #: for any byte-level tokenizer on ASCII text).
    prompt_chars_per_token: float = Field(4.0, gt=0)
    #: A reservation outlives the request deadline (server.request_timeout_s) by this much
    #: before it expires, so a gateway that dies mid-request does not hold budget for ever.
    reservation_margin_s: float = Field(60.0, gt=0)


def sync_limits_backend(data: Any) -> Any:
    """Accept the older top-level ``limits_backend`` and the ``limits.backend`` alike, and
    make both say the same (a config giving both, differently, is an error)."""
    if not isinstance(data, Mapping):
        return data
    limits = data.get("limits")
    legacy = data.get("limits_backend")
    backend = limits.get("backend") if isinstance(limits, Mapping) else None
    if legacy is not None and backend is not None and legacy != backend:
        raise ValueError(f"limits_backend ({legacy}) and limits.backend ({backend}) disagree")
    if legacy is None and backend is None:
        return data
    out = dict(data)
    out["limits_backend"] = legacy or backend
    out["limits"] = {**(limits if isinstance(limits, Mapping) else {}),
                     "backend": legacy or backend}
    return out


def tenant_problems(tenants: list[TenantSettings], model_names: set[str]) -> list[str]:
    """Tenants naming models that are not configured, and duplicate key names."""
    problems = []
    for tenant in tenants:
        for model in tenant.models or ():
            if model not in model_names:
                problems.append(f"tenant {tenant.name!r}: unknown model {model!r}")
        names = [k.name for k in tenant.api_keys if isinstance(k, ApiKeySettings)]
        if len(names) != len(set(names)):
            problems.append(f"tenant {tenant.name!r}: duplicate API key names")
    return problems
