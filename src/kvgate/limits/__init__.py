"""Per-tenant rate limits (requests and tokens per minute) and spend budgets."""

from kvgate.limits.policy import TenantPolicy
from kvgate.limits.stage import LimitsStage
from kvgate.limits.store import LimitStore, MemoryLimitStore
from kvgate.limits.store_redis import RedisLimitStore

__all__ = ["LimitStore", "LimitsStage", "MemoryLimitStore", "RedisLimitStore", "TenantPolicy"]
