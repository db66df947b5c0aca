"""Per-tenant and per-key rate limits (requests and tokens per minute) and spend budgets,
enforced by reservation: a request's worst-case cost is held at admission and settled from
its real usage when it ends."""

from kvgate.limits.policy import TenantPolicy
from kvgate.limits.stage import LimitsStage
from kvgate.limits.store import LimitStore, MemoryLimitStore
from kvgate.limits.store_redis import RedisLimitStore

__all__ = ["LimitStore", "LimitsStage", "MemoryLimitStore", "RedisLimitStore", "TenantPolicy"]
