"""Tenant policies from config, and the calendar of budget windows (UTC)."""

from __future__ import annotations

import datetime as dt

from kvgate.config.schema import TenantSettings
from kvgate.limits.policy import TenantPolicy, budget_window


def at(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.UTC).timestamp()


def test_a_tenant_without_limits_has_no_policy() -> None:
    assert TenantPolicy.from_settings(TenantSettings(name="a", api_keys=["k"])) is None
    policy = TenantPolicy.from_settings(TenantSettings(
        name="b", api_keys=["k"], rate_limit={"rpm": 5}, budget={"usd": 2.5, "window": 60}))
    assert policy == TenantPolicy("b", 5, None, 2.5, 60)


def test_daily_and_monthly_windows_follow_the_utc_calendar() -> None:
    assert budget_window("daily", at(2026, 11, 29, 23, 59, 59)) == ("2026-11-29",
                                                                    at(2026, 11, 30))
    assert budget_window("daily", at(2026, 11, 30)) == ("2026-11-30", at(2026, 12, 1))
    assert budget_window("monthly", at(2026, 2, 14, 12)) == ("2026-02", at(2026, 3, 1))
    assert budget_window("monthly", at(2026, 12, 31, 23)) == ("2026-12", at(2027, 1, 1))
    assert budget_window("monthly", at(2028, 2, 29)) == ("2028-02", at(2028, 3, 1))


def test_windows_of_n_seconds_are_counted_from_the_epoch() -> None:
    window, ends = budget_window(3600, 7200.0)
    assert (window, ends) == ("3600s-2", 10800.0)
    assert budget_window(3600, 10799.9)[0] == window
    assert budget_window(3600, 10800.0)[0] == "3600s-3"
