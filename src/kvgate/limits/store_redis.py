"""Buckets, spend and reservations in Redis (``limits.backend: redis``), shared by every
gateway.

One ``EVALSHA`` per admission (both buckets, the budget and the reservation, atomically, on
Redis's clock so gateways with skewed clocks agree) and one per settlement, queued and
written in the background so a request never waits on it. The scripts are in
``scripts_redis.py``. When Redis cannot be reached, ``admit`` raises ``LimitBackendError``
(the limits stage then fails open or closed, as configured) and a lost settlement is logged
and reported: its reservation expires on its own. The client reconnects by itself, so limits
are enforced again as soon as Redis is back, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from kvgate.extras import require
from kvgate.limits import scripts_redis
from kvgate.limits.admission import (
    Admission,
    Estimate,
    Refusal,
    Reservation,
    Usage,
    to_nusd,
    to_usd,
)
from kvgate.limits.policy import TenantPolicy, budget_window
from kvgate.limits.store import LimitBackendError

if TYPE_CHECKING:
    import redis.asyncio as redis_async

logger = logging.getLogger("kvgate.limits")
#: Queued writes beyond this are dropped (logged) instead of piling up behind a stalled Redis.
MAX_PENDING_WRITES = 10_000
#: A finished window's keys stay readable this long after it ends (late settlements, and
#: inspection).
_WINDOW_KEPT_S = 7 * 86400


class _WindowKeys:
    """A policy's keys for one budget window, built once per window, not per request."""

    __slots__ = ("admit", "ends_s", "expire_at_s", "settle", "window")

    def __init__(self, base: str, window: str, ends_s: float) -> None:
        w = f"{base}:{window}"
        self.window = window
        self.ends_s = ends_s
        self.expire_at_s = int(ends_s) + _WINDOW_KEPT_S
        # request bucket, token bucket, spend, reserved, reservations, their expiries
        self.admit = [f"{base}:requests", f"{base}:tokens", f"{w}:spend_nusd",
                      f"{w}:reserved_nusd", f"{w}:reservations", f"{w}:expiries"]
        self.settle = self.admit[1:]


class RedisLimitStore:
    def __init__(self, client: redis_async.Redis, *, key_prefix: str = "kvgate:limits",
                 reservation_ttl_s: float = 660.0,
                 on_backend_error: Callable[[str], None] | None = None) -> None:
        # NOTE: the redis package (the `redis` extra) is imported here, not at module level:
        # ``kvgate.limits`` re-exports this class, and a gateway without Redis must not need it.
        require("redis", "redis", feature="limits_backend redis")
        from redis.exceptions import NoScriptError, RedisError

        self._redis_error: type[RedisError] = RedisError
        self._no_script: type[NoScriptError] = NoScriptError
        self._client = client
        self._prefix = key_prefix
        self._ttl_s = reservation_ttl_s
        self._on_backend_error = on_backend_error
        self._shas: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()
        #: Per policy, its keys for the current window (one entry per configured policy).
        self._keys_by_policy: dict[str, _WindowKeys] = {}

    def _keys(self, policy: TenantPolicy) -> _WindowKeys:
        now_unix_s = time.time()
        keys = self._keys_by_policy.get(policy.name)
        if keys is None or now_unix_s >= keys.ends_s:
            window, ends_s = budget_window(policy.budget_window, now_unix_s)
            # The {hash tag} keeps a policy's keys in one slot, as a Redis Cluster script needs.
            keys = self._keys_by_policy[policy.name] = _WindowKeys(
                f"{self._prefix}:{{{policy.name}}}", window, ends_s)
        return keys

    async def _eval(self, script: str, keys: list[str], args: list[str | int | float]) -> Any:
        client = self._client
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = await client.script_load(script)
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except self._no_script:  # Redis restarted and lost its script cache
            return await client.eval(script, len(keys), *keys, *args)

    def _failed(self, operation: str, policy: TenantPolicy, exc: Exception) -> None:
        logger.warning("limits %s for %s: Redis unavailable (%s)", operation, policy.name, exc)
        if self._on_backend_error is not None:
            self._on_backend_error(operation)

    async def admit(self, policy: TenantPolicy, estimate: Estimate) -> Admission:
        keys = self._keys(policy)
        reservation_id = os.urandom(8).hex()
        try:
            reply = await self._eval(scripts_redis.ADMIT, keys.admit, [
                policy.rpm or 0, policy.tpm or 0, to_nusd(policy.budget_usd or 0),
                estimate.nusd, estimate.tokens, reservation_id, self._ttl_s, keys.expire_at_s])
        except self._redis_error as exc:
            raise LimitBackendError(str(exc)) from exc
        code, requests, tokens, spent, reserved, retry = _strings(reply)
        refused = cast("Refusal | None", code or None)
        requests_left = float(requests) if policy.rpm else None
        tokens_left = float(tokens) if policy.tpm else None
        spent_usd, reserved_usd = to_usd(float(spent)), to_usd(float(reserved))
        if refused is not None:
            retry_after_s = keys.ends_s - time.time() if refused == "budget" else float(retry)
            return Admission(refused, retry_after_s, requests_left, tokens_left, spent_usd,
                             reserved_usd)
        reservation = Reservation(reservation_id if policy.budget_usd else "", estimate.nusd,
                                  estimate.tokens if policy.tpm else 0, keys.window, keys.ends_s)
        return Admission(None, 0.0, requests_left, tokens_left, spent_usd, reserved_usd,
                         reservation)

    def settle(self, policy: TenantPolicy, reservation: Reservation, tokens: int,
               usd: float) -> None:
        if not (reservation.id or usd or (policy.tpm and tokens != reservation.tokens)):
            return  # nothing held, nothing to charge
        if len(self._pending) >= MAX_PENDING_WRITES:  # Redis stalled: do not pile up tasks
            self._failed("settle", policy, RuntimeError(
                f"dropped: {len(self._pending)} writes already waiting"))
            return
        task = asyncio.get_running_loop().create_task(
            self._settle(policy, reservation, tokens, usd))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, policy: TenantPolicy, reservation: Reservation, tokens: int,
                      usd: float) -> None:
        keys = self._keys(policy)
        if reservation.window and reservation.window != keys.window:
            # Settled after its window ended: released and charged in the window it was made in.
            keys = _WindowKeys(f"{self._prefix}:{{{policy.name}}}", reservation.window,
                               reservation.window_ends_s)
        try:
            await self._eval(scripts_redis.SETTLE, keys.settle, [
                reservation.id, policy.tpm or 0, reservation.tokens, tokens, to_nusd(usd),
                keys.expire_at_s])
        except self._redis_error as exc:
            self._failed("settle", policy, exc)

    async def usage(self, policy: TenantPolicy) -> Usage:
        keys = self._keys(policy)
        try:
            reply = await self._eval(scripts_redis.USAGE, keys.admit,
                                     [policy.rpm or 0, policy.tpm or 0])
        except self._redis_error as exc:
            raise LimitBackendError(str(exc)) from exc
        requests, tokens, spent, reserved, count = _strings(reply)
        return Usage(keys.window, keys.ends_s, to_usd(float(spent)), to_usd(float(reserved)),
                     int(count), float(requests) if policy.rpm else None,
                     float(tokens) if policy.tpm else None)

    async def reset(self, policy: TenantPolicy) -> None:
        try:
            await self._client.delete(*self._keys(policy).admit)
        except self._redis_error as exc:
            raise LimitBackendError(str(exc)) from exc

    async def flush(self) -> None:
        """Wait until every settlement queued so far is written (or lost, Redis being down)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Write the queued settlements (the client itself is closed by its owner)."""
        await self.flush()


def _strings(reply: Any) -> list[str]:
    return [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
