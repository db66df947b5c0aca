"""Several workers and per-process state: the user is told what is not shared."""

from __future__ import annotations

from kvgate.config.schema import Settings
from kvgate.server import per_process_state_warnings


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "deployments": [{"provider": "mock", "model": "x"}]}],
        "tenants": [{"name": "a", "api_keys": ["k"], "rate_limit": {"rpm": 10}},
                    {"name": "b", "api_keys": ["k2"]}],
    }
    return Settings.model_validate({**base, **overrides})


def test_memory_limits_and_cache_with_several_workers_are_called_out() -> None:
    warnings = per_process_state_warnings(settings(), 4)
    assert len(warnings) == 2
    assert "limits_backend: memory" in warnings[0] and "up to 4x" in warnings[0]
    assert "budgets of a on its own" in warnings[0]  # b has no limits
    assert "cache.backend: redis" in warnings[1]


def test_shared_backends_or_one_worker_need_no_warning() -> None:
    assert per_process_state_warnings(settings(), 1) == []
    shared = settings(limits_backend="redis", cache={"backend": "redis"})
    assert per_process_state_warnings(shared, 4) == []
