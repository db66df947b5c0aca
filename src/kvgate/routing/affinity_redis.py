"""The affinity index in Redis, so several gateway instances route one prefix the same way.

Layout: one Redis hash per block, ``<prefix>:<block hash hex>``, mapping deployment id to the
unix second it last served that block; every write refreshes the key's TTL, so Redis drops a
block nobody served for ``ttl_s`` on its own, and ``maxmemory`` with ``volatile-lru`` bounds
the total. A lookup is one ``EVALSHA`` round trip: the script walks the prompt's chain and stops
at the first block no candidate still holds, so it costs O(matched links x deployments).
Writes are pipelined in the background and never delay a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from kvgate.extras import MissingExtra

try:
    import redis.asyncio as redis_async
    from redis.exceptions import RedisError
except ModuleNotFoundError as exc:  # the `redis` extra
    raise MissingExtra("routing.affinity_backend redis", "redis", "redis") from exc

logger = logging.getLogger("kvgate.affinity")

# KEYS: block keys in prompt order. ARGV[1]: oldest fresh unix second; ARGV[2..]: deployments.
_MATCH_SCRIPT = """
local oldest = tonumber(ARGV[1])
local n = #ARGV - 1
local counts, alive, left = {}, {}, n
for j = 1, n do counts[j] = 0; alive[j] = true end
for i = 1, #KEYS do
  local seen = redis.call('HMGET', KEYS[i], unpack(ARGV, 2))
  for j = 1, n do
    if alive[j] then
      local s = tonumber(seen[j])
      if s and s >= oldest then counts[j] = i else alive[j] = false; left = left - 1 end
    end
  end
  if left == 0 then break end
end
return counts
"""


class RedisAffinityIndex:
    """Implements :class:`~kvgate.routing.affinity.AffinityIndex` on a shared Redis."""

    def __init__(
        self,
        client: redis_async.Redis,
        *,
        key_prefix: str,
        ttl_s: float,
        max_pending_writes: int = 10_000,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl_s = int(max(1, ttl_s))
        self._match = client.register_script(_MATCH_SCRIPT)
        self._pending: set[asyncio.Task[None]] = set()
        self._max_pending = max_pending_writes
        self.failures_total = 0

    def _key(self, block_hash: int) -> str:
        return f"{self._prefix}:{block_hash:016x}"

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        if not hashes or not deployment_ids:
            return [0] * len(deployment_ids)
        oldest = int(time.time()) - self._ttl_s
        try:
            counts = await self._match(
                keys=[self._key(h) for h in hashes], args=[oldest, *deployment_ids]
            )
        except RedisError as exc:
            # Affinity is an optimisation: without Redis, route as if every prompt were cold.
            self.failures_total += 1
            logger.warning("affinity lookup failed, routing cold: %s", exc)
            return [0] * len(deployment_ids)
        return [int(c) for c in counts]

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        if not hashes or len(self._pending) >= self._max_pending:
            return
        task = asyncio.get_running_loop().create_task(self._write(deployment_id, list(hashes)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, deployment_id: str, hashes: list[int]) -> None:
        now = int(time.time())
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for block_hash in hashes:
                    key = self._key(block_hash)
                    pipe.hset(key, deployment_id, now)
                    pipe.expire(key, self._ttl_s)
                await pipe.execute()
        except RedisError as exc:
            self.failures_total += 1
            logger.warning("affinity write failed: %s", exc)

    def forget(self, deployment_id: str) -> None:
        # Entries age out through their TTL; scanning every block key to delete one field
        # would cost O(index size).
        return None

    def size(self) -> int:
        return -1

    async def flush(self) -> None:
        """Wait until every write queued so far is done (or failed, Redis being down)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        await self._client.aclose()
