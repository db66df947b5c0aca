"""How limits speak to the client: refusals in OpenAI's error shape, ``x-ratelimit-*``
headers, and durations in OpenAI's reset format."""

from __future__ import annotations

import math

from kvgate.errors import GatewayError
from kvgate.limits.admission import Admission
from kvgate.limits.policy import SECONDS_PER_MINUTE, TenantPolicy


def refusal(policy: TenantPolicy, admission: Admission) -> GatewayError:
    retry_after_s = max(1, math.ceil(admission.retry_after_s))
    headers = {k.decode(): v.decode() for k, v in rate_limit_headers(policy, admission)}
    headers["retry-after"] = str(retry_after_s)
    who = policy.label or f"tenant '{policy.name}'"
    if admission.refused == "budget":
        window = (f"{policy.budget_window}-second window" if isinstance(policy.budget_window, int)
                  else {"daily": "day (UTC)", "monthly": "month (UTC)"}[policy.budget_window])
        return GatewayError(
            402, f"{who} has used its budget of ${policy.budget_usd:g} for this {window} "
                 f"(${admission.spent_usd:.4f} spent, ${admission.reserved_usd:.4f} reserved by "
                 f"requests in flight, and this request may cost more than is left); it renews "
                 f"in {duration(retry_after_s)}",
            error_type="insufficient_quota", code="budget_exceeded", headers=headers,
        )
    limit = (f"{policy.rpm} requests" if admission.refused == "requests"
             else f"{policy.tpm} tokens")
    return GatewayError(
        429, f"rate limit reached for {who}: {limit} per minute; retry after "
             f"{admission.retry_after_s:.2f} s",
        error_type="rate_limit_error", code="rate_limit_exceeded", headers=headers,
    )


def backend_unavailable() -> GatewayError:
    """``limits.on_backend_error: fail_closed`` while the store cannot be reached."""
    return GatewayError(
        503, "limits cannot be checked right now (their store is unreachable); retry shortly",
        error_type="server_error", code="limits_unavailable", headers={"retry-after": "1"},
    )


def rate_limit_headers(policy: TenantPolicy, admission: Admission) -> tuple[
        tuple[bytes, bytes], ...]:
    """OpenAI's ``x-ratelimit-*`` headers: limit, what is left, and when the bucket is full."""
    headers: list[tuple[bytes, bytes]] = []
    for kind, limit, left in (("requests", policy.rpm, admission.requests_left),
                              ("tokens", policy.tpm, admission.tokens_left)):
        if not limit or left is None:
            continue
        full_in_s = max(0.0, (limit - left) * SECONDS_PER_MINUTE / limit)
        headers += [
            (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
            (b"x-ratelimit-remaining-" + kind.encode(), str(max(0, math.floor(left))).encode()),
            (b"x-ratelimit-reset-" + kind.encode(), duration(full_in_s).encode()),
        ]
    return tuple(headers)


def duration(seconds: float) -> str:
    """``850ms``, ``12s``, ``1m30s``, ``2h5m``, ``3d4h``: OpenAI's reset format, extended."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
