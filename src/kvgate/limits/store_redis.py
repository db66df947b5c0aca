"""Tenants' buckets and spend in Redis (``limits_backend: redis``), shared by every gateway.

One ``EVALSHA`` per admission (both buckets and the budget, atomically, on Redis's own clock
so gateways with skewed clocks agree); charges are queued and written in the background, so a
request never waits on them. If Redis cannot be reached, requests are admitted (fail open,
logged): a Redis outage must not take the gateway down with it, at the price of limits not
being enforced meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from kvgate.extras import require
from kvgate.limits.admission import Admission, Refusal
from kvgate.limits.policy import TenantPolicy, budget_window

if TYPE_CHECKING:
    import redis.asyncio as redis_async

logger = logging.getLogger("kvgate.limits")
#: Queued writes beyond this are dropped (logged) instead of piling up behind a stalled Redis.
MAX_PENDING_WRITES = 10_000

# KEYS: request bucket, token bucket, spend. ARGV: rpm, tpm, budget_usd (0 = none).
# Buckets are hashes {level, ts}; a missing bucket is full (the minute is store.py's). Returns
# strings (Redis truncates Lua numbers to integers): refusal code, requests left, tokens left,
# spent, retry after (s).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60)
end
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
local requests, tokens = -1, -1
if rpm > 0 then requests = level(KEYS[1], rpm) end
if tpm > 0 then tokens = level(KEYS[2], tpm) end
local function answer(code, retry)
  return {code, tostring(requests), tostring(tokens), tostring(spent), tostring(retry)}
end
if budget > 0 and spent >= budget then return answer('budget', 0) end
if rpm > 0 and requests < 1 then return answer('requests', (1 - requests) * 60 / rpm) end
if tpm > 0 and tokens <= 0 then return answer('tokens', -tokens * 60 / tpm) end
if rpm > 0 then
  requests = requests - 1
  redis.call('HSET', KEYS[1], 'level', tostring(requests), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
return answer('', 0)
"""

# KEYS: token bucket, spend. ARGV: tpm, tokens, usd, spend key's expiry (Unix s).
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, tokens, usd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and tokens > 0 then
  local v = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local level = tpm
  if v[1] then level = math.min(tpm, tonumber(v[1]) + (now - tonumber(v[2])) * tpm / 60) end
  level = math.max(-tpm, level - tokens)
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if usd > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[3])
  redis.call('EXPIREAT', KEYS[2], ARGV[4])
end
return 1
"""

#: Spend of a finished window stays readable this long after it ends (for inspection).
_SPEND_KEPT_S = 7 * 86400


class RedisLimitStore:
    def __init__(self, client: redis_async.Redis, *, key_prefix: str = "kvgate:limits") -> None:
        # NOTE: the redis package (the `redis` extra) is imported here, not at module level:
        # ``kvgate.limits`` re-exports this class, and a gateway without Redis must not need it.
        require("redis", "redis", feature="limits_backend redis")
        from redis.exceptions import NoScriptError, RedisError

        self._redis_error: type[RedisError] = RedisError
        self._no_script: type[NoScriptError] = NoScriptError
        self._client = client
        self._prefix = key_prefix
        self._admit_sha: str | None = None
        self._charge_sha: str | None = None
        self._pending: set[asyncio.Task[None]] = set()
        #: Per tenant, its keys for the current budget window and when that window ends
        #: (rebuilt once per window, not per request; one entry per configured tenant).
        self._keys_by_tenant: dict[str, tuple[str, str, str, float]] = {}

    def _keys(self, policy: TenantPolicy) -> tuple[str, str, str, float]:
        now_unix_s = time.time()
        keys = self._keys_by_tenant.get(policy.name)
        if keys is None or now_unix_s >= keys[3]:
            window, ends_s = budget_window(policy.budget_window, now_unix_s)
            base = f"{self._prefix}:{policy.name}"
            keys = self._keys_by_tenant[policy.name] = (
                f"{base}:requests", f"{base}:tokens", f"{base}:spend:{window}", ends_s)
        return keys

    async def _eval(self, script: str, keys: list[str], args: list[str | int | float]) -> Any:
        client = self._client
        sha = self._admit_sha if script is _ADMIT else self._charge_sha
        if sha is None:
            sha = await client.script_load(script)
            if script is _ADMIT:
                self._admit_sha = sha
            else:
                self._charge_sha = sha
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except self._no_script:  # Redis restarted and lost its script cache
            return await client.eval(script, len(keys), *keys, *args)

    async def admit(self, policy: TenantPolicy) -> Admission:
        requests_key, tokens_key, spend_key, ends_s = self._keys(policy)
        try:
            reply = await self._eval(_ADMIT, [requests_key, tokens_key, spend_key],
                                     [policy.rpm or 0, policy.tpm or 0, policy.budget_usd or 0])
        except self._redis_error as exc:
            logger.warning("limits not enforced for %s: Redis unavailable (%s)", policy.name, exc)
            return Admission(None, 0.0, None, None, 0.0)
        code, requests, tokens, spent, retry = (
            part.decode() if isinstance(part, bytes) else str(part)
            for part in reply
        )
        refused = cast("Refusal | None", code or None)
        retry_after_s = ends_s - time.time() if refused == "budget" else float(retry)
        return Admission(
            refused, retry_after_s,
            float(requests) if policy.rpm else None, float(tokens) if policy.tpm else None,
            float(spent),
        )

    def charge(self, policy: TenantPolicy, tokens: int, usd: float) -> None:
        if not (tokens and policy.tpm) and not usd:
            return
        if len(self._pending) >= MAX_PENDING_WRITES:  # Redis stalled: do not pile up tasks
            logger.warning("charge for %s dropped: %d writes already waiting on Redis",
                           policy.name, len(self._pending))
            return
        task = asyncio.get_running_loop().create_task(self._charge(policy, tokens, usd))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _charge(self, policy: TenantPolicy, tokens: int, usd: float) -> None:
        _, tokens_key, spend_key, ends_s = self._keys(policy)
        try:
            await self._eval(_CHARGE, [tokens_key, spend_key],
                             [policy.tpm or 0, tokens, repr(usd), int(ends_s) + _SPEND_KEPT_S])
        except self._redis_error as exc:
            logger.warning("charge for %s lost: Redis unavailable (%s)", policy.name, exc)

    async def flush(self) -> None:
        """Wait until every charge queued so far is written (or dropped, Redis being down)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Write the queued charges (the client itself is closed by its owner)."""
        await self.flush()

