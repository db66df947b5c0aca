"""What one tenant (or one of its named API keys) may use, and the calendar of its budget.

Rate limits are token buckets refilled continuously: ``rpm`` requests and ``tpm`` tokens per
minute, with a burst of one minute's worth. A request takes one request and reserves its
estimated tokens at admission; when it ends, the difference to its real usage is refunded or
charged, so the token bucket can go into debt -- at most one minute's worth -- and the next
request waits for the refill.

Budgets are spent per window: a UTC calendar day or month, or fixed windows of N seconds
counted from the Unix epoch. A request is admitted only if the window's spend, plus what the
requests in flight reserved, plus its own worst-case estimate stays within the budget. Spend
is the real cost from usage and deployment prices; cached answers cost nothing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from kvgate.config.schema import ApiKeySettings, BudgetSettings, RateLimitSettings, TenantSettings

BudgetWindow = Literal["daily", "monthly"] | int
#: Rate limits are per minute; a bucket refills ``limit / SECONDS_PER_MINUTE`` per second.
SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    #: The store's name for it: the tenant's name, or ``tenant/key`` for a key's own limits.
    name: str
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_window: BudgetWindow
    #: How refusals name it: "tenant 'a'" or "API key 'k' of tenant 'a'".
    label: str = field(default="", compare=False)

    @classmethod
    def from_settings(cls, tenant: TenantSettings) -> TenantPolicy | None:
        """The tenant's policy, or None when it has no limits at all."""
        return _policy(tenant.name, f"tenant '{tenant.name}'", tenant.rate_limit, tenant.budget)

    @classmethod
    def for_key(cls, tenant: str, key: ApiKeySettings) -> TenantPolicy | None:
        """A named key's own policy (on top of its tenant's), or None when it has none."""
        return _policy(f"{tenant}/{key.name}", f"API key '{key.name}' of tenant '{tenant}'",
                       key.rate_limit, key.budget)


def _policy(name: str, label: str, rate: RateLimitSettings | None,
            budget: BudgetSettings | None) -> TenantPolicy | None:
    policy = TenantPolicy(
        name=name,
        rpm=rate.rpm if rate else None,
        tpm=rate.tpm if rate else None,
        budget_usd=budget.usd if budget else None,
        budget_window=budget.window if budget else "monthly",
        label=label,
    )
    return policy if policy.rpm or policy.tpm or policy.budget_usd else None


def budget_window(window: BudgetWindow, now_unix_s: float) -> tuple[str, float]:
    """The id of the window ``now_unix_s`` falls in, and when that window ends (Unix s)."""
    if isinstance(window, int):
        index = int(now_unix_s // window)
        return f"{window}s-{index}", float((index + 1) * window)
    now = dt.datetime.fromtimestamp(now_unix_s, tz=dt.UTC)
    if window == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + dt.timedelta(days=1)).timestamp()
    days = calendar.monthrange(now.year, now.month)[1]
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m"), (start + dt.timedelta(days=days)).timestamp()
