"""Where tenants' buckets and spend live: the ``LimitStore`` protocol and the in-memory store.

A store answers admissions (one call per request, before anything else is done for it) and
takes charges when requests end. Charges never block the request path: the Redis store queues
them. The memory store's state is one entry per configured tenant, so it is bounded by the
config; a budget window that has ended is replaced by the next on the tenant's next request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvgate.limits.admission import Admission, Refusal
from kvgate.limits.policy import TenantPolicy, budget_window

#: A bucket in debt (tokens charged beyond what it held) holds at most one minute's refill.
SECONDS_PER_MINUTE = 60.0


class LimitStore(Protocol):
    async def admit(self, policy: TenantPolicy) -> Admission:
        """Refuse, or admit and take one request from the tenant's request bucket."""
        ...

    def charge(self, policy: TenantPolicy, tokens: int, usd: float) -> None:
        """Charge a finished request's tokens and spend; must not block."""
        ...

    async def flush(self) -> None:
        """Return once every charge made so far is visible to ``admit`` (on every gateway
        sharing the store); a store that writes synchronously returns at once."""
        ...

    async def aclose(self) -> None:
        """Write what is queued, then release the store (the Redis client is its owner's)."""
        ...


@dataclass(slots=True)
class _Bucket:
    level: float
    updated_s: float

    def refill(self, capacity: float, now_s: float) -> None:
        per_s = capacity / SECONDS_PER_MINUTE
        self.level = min(capacity, self.level + (now_s - self.updated_s) * per_s)
        self.updated_s = now_s


@dataclass(slots=True)
class _TenantState:
    requests: _Bucket
    tokens: _Bucket
    #: The current budget window ends at this wall-clock time (Unix s); spend is its.
    window_ends_s: float = 0.0
    spent_usd: float = 0.0


class MemoryLimitStore:
    """Buckets and spend in this process (``limits_backend: memory``)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._tenants: dict[str, _TenantState] = {}

    def _state(self, policy: TenantPolicy, now_s: float) -> _TenantState:
        state = self._tenants.get(policy.name)
        if state is None:
            state = self._tenants[policy.name] = _TenantState(
                _Bucket(float(policy.rpm or 0), now_s), _Bucket(float(policy.tpm or 0), now_s))
        if policy.rpm:
            state.requests.refill(policy.rpm, now_s)
        if policy.tpm:
            state.tokens.refill(policy.tpm, now_s)
        if policy.budget_usd:
            now_unix_s = self._wall_clock()
            if now_unix_s >= state.window_ends_s:  # a new window (or the first)
                _, state.window_ends_s = budget_window(policy.budget_window, now_unix_s)
                state.spent_usd = 0.0
        return state

    async def admit(self, policy: TenantPolicy) -> Admission:
        now_s = self._clock()
        state = self._state(policy, now_s)
        requests = state.requests.level if policy.rpm else None
        tokens = state.tokens.level if policy.tpm else None

        def refuse(reason: Refusal, retry_after_s: float) -> Admission:
            return Admission(reason, retry_after_s, requests, tokens, state.spent_usd)

        if policy.budget_usd and state.spent_usd >= policy.budget_usd:
            return refuse("budget", state.window_ends_s - self._wall_clock())
        if policy.rpm and state.requests.level < 1:
            return refuse("requests", (1 - state.requests.level) * SECONDS_PER_MINUTE / policy.rpm)
        if policy.tpm and state.tokens.level <= 0:
            return refuse("tokens", -state.tokens.level * SECONDS_PER_MINUTE / policy.tpm)
        if policy.rpm:
            state.requests.level -= 1
            requests = state.requests.level
        return Admission(None, 0.0, requests, tokens, state.spent_usd)

    def charge(self, policy: TenantPolicy, tokens: int, usd: float) -> None:
        state = self._state(policy, self._clock())
        if policy.tpm and tokens:
            state.tokens.level = max(-float(policy.tpm), state.tokens.level - tokens)
        state.spent_usd += usd

    async def flush(self) -> None:
        return None  # charges are applied synchronously in charge()

    async def aclose(self) -> None:
        return None
