"""Where buckets, spend and reservations live: the ``LimitStore`` protocol and the memory store.

A store answers admissions (one call per request and policy, before anything else is done for
it) and takes settlements when requests end. Settlements never block the request path: the
Redis store queues them. The memory store's state is one entry per configured policy, plus one
per request in flight; a budget window that has ended is replaced by the next on the policy's
next use.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kvgate.limits.admission import (
    Admission,
    Estimate,
    Refusal,
    Reservation,
    Usage,
    to_nusd,
    to_usd,
)
from kvgate.limits.policy import SECONDS_PER_MINUTE, TenantPolicy, budget_window


class LimitBackendError(Exception):
    """The store's backend could not be reached; the limits stage applies
    ``limits.on_backend_error``."""


class LimitStore(Protocol):
    async def admit(self, policy: TenantPolicy, estimate: Estimate) -> Admission:
        """Refuse, or admit: take one request from the request bucket, ``estimate.tokens``
        from the token bucket, and reserve ``estimate.nusd`` in the current budget window.

        Admitted only if spent + outstanding reservations + the estimate stays within the
        budget, the request bucket holds a request and the token bucket holds the estimate
        (at most a full bucket). Reservations expire ``reservation_ttl_s`` after admission
        unless settled. Raises ``LimitBackendError`` when the backend is unreachable.
        """
        ...

    def settle(self, policy: TenantPolicy, reservation: Reservation, tokens: int,
               usd: float) -> None:
        """Release ``reservation``, charge ``usd`` to the reservation's window and move the
        token bucket by the difference between the reserved and the used ``tokens``.

        Call exactly once per admission; must not block (a backend error is logged and
        counted, and the reservation then expires on its own).
        """
        ...

    async def usage(self, policy: TenantPolicy) -> Usage:
        """The current window's spend and reservations and the buckets' levels (expired
        reservations dropped first). Raises ``LimitBackendError``."""
        ...

    async def reset(self, policy: TenantPolicy) -> None:
        """Forget the current window's spend and reservations and fill both buckets. Requests
        in flight still settle: their real cost is charged to the renewed window."""
        ...

    async def flush(self) -> None:
        """Return once every settlement made so far is visible to ``admit`` (on every gateway
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

    def take(self, amount: float, capacity: float) -> None:
        """Take (or with a negative amount give back), within [-capacity, capacity]."""
        self.level = max(-capacity, min(capacity, self.level - amount))


@dataclass(slots=True)
class _PolicyState:
    requests: _Bucket
    tokens: _Bucket
    #: The current budget window and its end (Unix s); spend and reservations are its.
    window: str = ""
    window_ends_s: float = 0.0
    spent_nusd: int = 0
    reserved_nusd: int = 0
    #: id -> (nusd, expires at, Unix s). Insertion order is expiry order (one TTL for all),
    #: so expired ones are always at the front.
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)


class MemoryLimitStore:
    """Buckets, spend and reservations in this process (``limits.backend: memory``)."""

    def __init__(self, *, reservation_ttl_s: float = 660.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._ttl_s = reservation_ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._policies: dict[str, _PolicyState] = {}
        self._ids = itertools.count()

    def _state(self, policy: TenantPolicy) -> _PolicyState:
        now_s = self._clock()
        state = self._policies.get(policy.name)
        if state is None:
            state = self._policies[policy.name] = _PolicyState(
                _Bucket(float(policy.rpm or 0), now_s), _Bucket(float(policy.tpm or 0), now_s))
        if policy.rpm:
            state.requests.refill(policy.rpm, now_s)
        if policy.tpm:
            state.tokens.refill(policy.tpm, now_s)
        now_unix_s = self._wall_clock()
        if now_unix_s >= state.window_ends_s:  # a new window (or the first)
            state.window, state.window_ends_s = budget_window(policy.budget_window, now_unix_s)
            state.spent_nusd = state.reserved_nusd = 0
            state.reservations.clear()  # they belong to the window that ended
        reservations = state.reservations
        while reservations:
            first = next(iter(reservations))
            nusd, expires_s = reservations[first]
            if expires_s > now_unix_s:
                break
            del reservations[first]
            state.reserved_nusd -= nusd
        return state

    async def admit(self, policy: TenantPolicy, estimate: Estimate) -> Admission:
        state = self._state(policy)
        requests = state.requests.level if policy.rpm else None
        tokens = state.tokens.level if policy.tpm else None

        def refuse(reason: Refusal, retry_after_s: float) -> Admission:
            return Admission(reason, retry_after_s, requests, tokens, to_usd(state.spent_nusd),
                             to_usd(state.reserved_nusd))

        if policy.budget_usd:
            held = state.spent_nusd + state.reserved_nusd
            budget_nusd = to_nusd(policy.budget_usd)
            if held >= budget_nusd or held + estimate.nusd > budget_nusd:
                return refuse("budget", state.window_ends_s - self._wall_clock())
        if policy.rpm and state.requests.level < 1:
            return refuse("requests", (1 - state.requests.level) * SECONDS_PER_MINUTE / policy.rpm)
        if policy.tpm:
            needed = max(1, min(estimate.tokens, policy.tpm))
            if state.tokens.level < needed:
                return refuse("tokens",
                              (needed - state.tokens.level) * SECONDS_PER_MINUTE / policy.tpm)
            state.tokens.take(estimate.tokens, policy.tpm)
            tokens = state.tokens.level
        if policy.rpm:
            state.requests.level -= 1
            requests = state.requests.level
        reservation_id = ""
        if policy.budget_usd:
            reservation_id = str(next(self._ids))
            state.reservations[reservation_id] = (estimate.nusd, self._wall_clock() + self._ttl_s)
            state.reserved_nusd += estimate.nusd
        reservation = Reservation(reservation_id, estimate.nusd, estimate.tokens if policy.tpm
                                  else 0, state.window, state.window_ends_s)
        return Admission(None, 0.0, requests, tokens, to_usd(state.spent_nusd),
                         to_usd(state.reserved_nusd), reservation)

    def settle(self, policy: TenantPolicy, reservation: Reservation, tokens: int,
               usd: float) -> None:
        state = self._state(policy)
        if policy.tpm:
            state.tokens.take(tokens - reservation.tokens, policy.tpm)
        if reservation.window != state.window and reservation.id:
            return  # its window has ended: spend and reservation went with it
        held = state.reservations.pop(reservation.id, None)
        if held is not None:
            state.reserved_nusd -= held[0]
        state.spent_nusd += to_nusd(usd)

    async def usage(self, policy: TenantPolicy) -> Usage:
        state = self._state(policy)
        return Usage(state.window, state.window_ends_s, to_usd(state.spent_nusd),
                     to_usd(state.reserved_nusd), len(state.reservations),
                     state.requests.level if policy.rpm else None,
                     state.tokens.level if policy.tpm else None)

    async def reset(self, policy: TenantPolicy) -> None:
        self._policies.pop(policy.name, None)

    async def flush(self) -> None:
        return None  # settlements are applied synchronously in settle()

    async def aclose(self) -> None:
        return None
