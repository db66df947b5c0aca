"""What one tenant may use, and the calendar of its spend budget.

Rate limits are token buckets refilled continuously: ``rpm`` requests and ``tpm`` tokens per
minute, with a burst of one minute's worth. A request is admitted while the request bucket
holds at least one request and the token bucket is not in debt; its tokens are charged when
it ends (prompt + completion, from the upstream's usage), so a large answer can put the token
bucket into debt -- at most one minute's worth -- and the next request waits for the refill.

Budgets are spent per window: a UTC calendar day or month, or fixed windows of N seconds
counted from the Unix epoch. Spend is the cost computed from usage and deployment prices;
answers from the response cache cost nothing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Literal

from kvgate.config.schema import TenantSettings

BudgetWindow = Literal["daily", "monthly"] | int


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    name: str
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_window: BudgetWindow

    @classmethod
    def from_settings(cls, tenant: TenantSettings) -> TenantPolicy | None:
        """The tenant's policy, or None when it has no limits at all."""
        rate, budget = tenant.rate_limit, tenant.budget
        policy = cls(
            name=tenant.name,
            rpm=rate.rpm if rate else None,
            tpm=rate.tpm if rate else None,
            budget_usd=budget.usd if budget else None,
            budget_window=budget.window if budget else "monthly",
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
