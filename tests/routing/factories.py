"""Deployments and calls for unit tests of routing and resilience, no network involved."""

from __future__ import annotations

from typing import Any

from kvgate.config.schema import DeploymentSettings, MockProviderSettings, RoutingSettings
from kvgate.gateway.call import Call
from kvgate.providers.mock import MockProvider
from kvgate.routing.deployment import Deployment, DeploymentId


def deployment(name: str, **settings: Any) -> Deployment:
    """A deployment on an in-process mock; ``settings`` are DeploymentSettings fields."""
    return Deployment(
        id=DeploymentId(name),
        provider_name=name,
        provider=MockProvider(name, MockProviderSettings(type="mock")),
        upstream_model="m",
        settings=DeploymentSettings(provider=name, model="m", **settings),
        resumes_streams=True,
    )


def call(*, stream: bool = False) -> Call:
    return Call(
        request_id="r", endpoint="chat", body={"messages": []}, model="m", stream=stream,
        include_usage=False, received_s=0.0,
    )


def routing(**fields: Any) -> RoutingSettings:
    return RoutingSettings(**{"seed": 7, **fields})
