"""A deployment at run time: its price, its fresh stats, identity; and a route decision."""

from __future__ import annotations

import pytest

from kvgate.config.schema import DeploymentSettings, MockProviderSettings
from kvgate.core.deployment import Deployment, DeploymentId, RouteDecision
from kvgate.providers.mock import MockProvider


def deployment(**prices: float) -> Deployment:
    settings = DeploymentSettings(provider="mock", model="small", **prices)
    return Deployment(
        id=DeploymentId("mock/small"), provider_name="mock",
        provider=MockProvider("mock", MockProviderSettings(type="mock")),
        upstream_model="small", settings=settings, resumes_streams=False,
    )


def test_cost_is_priced_per_thousand_tokens_each_way() -> None:
    priced = deployment(cost_per_1k_input=0.5, cost_per_1k_output=2.0)
    assert priced.cost_usd(1000, 0) == pytest.approx(0.5)
    assert priced.cost_usd(0, 1000) == pytest.approx(2.0)
    assert priced.cost_usd(300, 50) == pytest.approx(0.15 + 0.1)
    assert priced.cost_usd(0, 0) == 0.0
    assert deployment().cost_usd(10_000, 10_000) == 0.0  # unpriced: free


def test_stats_start_at_zero_and_are_per_deployment() -> None:
    one, other = deployment(), deployment()
    assert one.stats is not other.stats
    stats = one.stats
    assert (stats.in_flight, stats.requests_total, stats.failures_total) == (0, 0, 0)
    assert stats.cost_usd_total == 0.0
    assert stats.ewma_ttft_ms is None and stats.ewma_ms_per_token is None
    assert (stats.engine_running, stats.engine_waiting, stats.engine_kv_usage) == (0, 0, 0)
    one.stats.in_flight += 1
    assert other.stats.in_flight == 0


def test_deployments_compare_by_identity() -> None:
    """Two deployments with equal fields are still two (they key dicts and sets)."""
    one, other = deployment(), deployment()
    assert one != other and one == one
    assert len({one, other}) == 2


def test_route_decision_carries_its_own_explanation() -> None:
    chosen = deployment()
    plain, other = RouteDecision(chosen), RouteDecision(chosen)
    assert plain.deployment is chosen and plain.explanation == {}
    plain.explanation["strategy"] = "round_robin"
    assert other.explanation == {}
    explained = RouteDecision(chosen, {"matched_blocks": 3})
    assert explained.explanation == {"matched_blocks": 3}
