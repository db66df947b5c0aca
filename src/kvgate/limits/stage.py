"""The limits stage: refuse a tenant's request over its rate limits (429) or budget (402),
and charge every request's tokens and spend to its tenant when the request ends.

It sits right after authentication, before the response cache: a cached answer still counts
as a request (it costs no tokens and no money). A request is charged what its upstream
attempts billed (``Call.billed_tokens`` / ``billed_usd``) whatever the ending: an answer, an
upstream error after some attempts, a stream the client left early.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from kvgate.core.call import Call, ChunkStream, Outcome, Stage, StreamingCompletion
from kvgate.core.provider import JSONObject
from kvgate.errors import GatewayError
from kvgate.limits.admission import Admission
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.store import SECONDS_PER_MINUTE, LimitStore
from kvgate.observability.metrics import Metrics


class LimitsStage:
    def __init__(self, next_stage: Stage, store: LimitStore, policies: list[TenantPolicy],
                 metrics: Metrics) -> None:
        self._next = next_stage
        self._store = store
        self._policies = {p.name: p for p in policies}
        self._metrics = metrics
        #: The latest admission per tenant, for /admin/stats (bounded by the config).
        self._latest: dict[str, Admission] = {}

    async def __call__(self, call: Call) -> Outcome:
        policy = self._policies.get(call.tenant) if call.tenant is not None else None
        if policy is None:
            return await self._next(call)
        admission = await self._store.admit(policy)
        self._latest[policy.name] = admission
        call.response_headers = rate_limit_headers(policy, admission)
        if admission.refused is not None:
            self._metrics.limit_rejections_for(policy.name, admission.refused).inc()
            raise refusal(policy, admission)
        try:
            outcome = await self._next(call)
        except BaseException:
            self._charge(policy, call)
            raise
        if isinstance(outcome, StreamingCompletion):
            outcome.chunks = _ChargedOnClose(outcome.chunks, lambda: self._charge(policy, call))
        else:
            self._charge(policy, call)
        return outcome

    def _charge(self, policy: TenantPolicy, call: Call) -> None:
        self._store.charge(policy, call.billed_tokens, call.billed_usd)
        if call.billed_usd:
            self._metrics.tenant_spend_for(policy.name).inc(call.billed_usd)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per tenant: its limits and, as of its latest request, what was left."""
        out: dict[str, dict[str, Any]] = {}
        for name, policy in self._policies.items():
            latest = self._latest.get(name)
            out[name] = {
                "rpm": policy.rpm, "tpm": policy.tpm, "budget_usd": policy.budget_usd,
                "budget_window": policy.budget_window,
                "requests_left": None if latest is None else _round(latest.requests_left),
                "tokens_left": None if latest is None else _round(latest.tokens_left),
                "spent_usd": None if latest is None else round(latest.spent_usd, 6),
            }
        return out


class _ChargedOnClose:
    """A chunk stream that charges its call once, when it is closed (end, error or client
    gone); the API layer always closes the stream it relays."""

    __slots__ = ("_charge", "_chunks")

    def __init__(self, chunks: ChunkStream, charge: Callable[[], None]) -> None:
        self._chunks = chunks
        self._charge: Callable[[], None] | None = charge

    def __aiter__(self) -> _ChargedOnClose:
        return self

    def __anext__(self) -> Awaitable[JSONObject]:
        return self._chunks.__anext__()

    async def aclose(self) -> None:
        charge, self._charge = self._charge, None
        try:
            # First: closing bills an attempt the client left mid-answer.
            await self._chunks.aclose()
        finally:  # also when the close itself is cancelled
            if charge is not None:
                charge()


def refusal(policy: TenantPolicy, admission: Admission) -> GatewayError:
    retry_after_s = max(1, math.ceil(admission.retry_after_s))
    headers = {k.decode(): v.decode() for k, v in rate_limit_headers(policy, admission)}
    headers["retry-after"] = str(retry_after_s)
    if admission.refused == "budget":
        window = (f"{policy.budget_window}-second window" if isinstance(policy.budget_window, int)
                  else {"daily": "day (UTC)", "monthly": "month (UTC)"}[policy.budget_window])
        return GatewayError(
            402, f"tenant '{policy.name}' has spent its budget of ${policy.budget_usd:g} for this "
                 f"{window} (${admission.spent_usd:.4f}); it renews in {_duration(retry_after_s)}",
            error_type="insufficient_quota", code="budget_exceeded", headers=headers,
        )
    limit = (f"{policy.rpm} requests" if admission.refused == "requests"
             else f"{policy.tpm} tokens")
    return GatewayError(
        429, f"rate limit reached for tenant '{policy.name}': {limit} per minute; retry after "
             f"{admission.retry_after_s:.2f} s",
        error_type="rate_limit_error", code="rate_limit_exceeded", headers=headers,
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
            (b"x-ratelimit-reset-" + kind.encode(), _duration(full_in_s).encode()),
        ]
    return tuple(headers)


def _duration(seconds: float) -> str:
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
