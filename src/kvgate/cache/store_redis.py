"""Cached responses in Redis (``cache.backend: redis``), shared by every gateway instance.

Entries are strings with a TTL; a sorted set of keys by last use bounds them to
``max_entries`` (LRU), trimmed by the script that stores. A read is one ``EVALSHA`` (get and
touch); a write is queued and never delays the request. If Redis cannot be reached, reads
miss and writes are dropped (logged): the cache is an optimisation, never a point of failure.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from kvgate.cache.store import CachedResponse
from kvgate.extras import MissingExtra

try:
    import redis.asyncio as redis_async
    from redis.exceptions import NoScriptError, RedisError
except ModuleNotFoundError as exc:  # the `redis` extra
    raise MissingExtra("cache.backend redis", "redis", "redis") from exc

logger = logging.getLogger("kvgate.cache")
#: Queued writes beyond this are dropped (logged) instead of piling up behind a stalled Redis.
MAX_PENDING_WRITES = 10_000

# KEYS: the entry, the LRU set. ARGV: the entry's id in the set.
_GET = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return value
"""

# KEYS: the entry, the LRU set. ARGV: id, value, ttl (ms), max entries, key prefix.
_PUT = """
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #oldest, 2 do redis.call('DEL', ARGV[5] .. oldest[i]) end
end
return 1
"""


class RedisResponseStore:
    def __init__(self, client: redis_async.Redis, *, max_entries: int, ttl_s: float,
                 key_prefix: str = "kvgate:cache:exact") -> None:
        self._client = client
        self._max_entries = max_entries
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._entry_prefix = key_prefix + ":e:"
        self._lru_key = key_prefix + ":lru"
        self._shas: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def _eval(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = await self._client.script_load(script)
        try:
            return await self._client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted and lost its script cache
            return await self._client.eval(script, len(keys), *keys, *args)

    async def get(self, key: bytes) -> CachedResponse | None:
        entry_id = key.hex()
        try:
            raw = await self._eval(_GET, [self._entry_prefix + entry_id, self._lru_key],
                                   [entry_id])
        except RedisError as exc:
            logger.warning("response cache read skipped: Redis unavailable (%s)", exc)
            return None
        if raw is None:
            return None
        data = orjson.loads(raw)
        return CachedResponse(data["body"], data["upstream_model"], data["deployment_id"])

    def put(self, key: bytes, value: CachedResponse) -> None:
        if len(self._pending) >= MAX_PENDING_WRITES:  # Redis stalled: do not pile up tasks
            return
        task = asyncio.get_running_loop().create_task(self._put(key.hex(), value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, entry_id: str, value: CachedResponse) -> None:
        data = orjson.dumps({"body": value.body, "upstream_model": value.upstream_model,
                             "deployment_id": value.deployment_id})
        try:
            await self._eval(_PUT, [self._entry_prefix + entry_id, self._lru_key],
                             [entry_id, data.decode(), self._ttl_ms, self._max_entries,
                              self._entry_prefix])
        except RedisError as exc:
            logger.warning("response cache write dropped: Redis unavailable (%s)", exc)

    def size(self) -> int:
        return -1

    async def flush(self) -> None:
        """Wait until every write queued so far is done (or dropped, Redis being down)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
