"""Deployments and calls for unit tests of routing and resilience, no network involved."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from kvgate.config.schema import DeploymentSettings, MockProviderSettings, RoutingSettings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, DeploymentId
from kvgate.providers.mock import MockProvider
from kvgate.routing import RoutingContext, RoutingStrategy
from kvgate.routing.affinity import MemoryAffinityIndex

if TYPE_CHECKING:
    from kvgate.routing.ttft_ledger import Ledger
    from kvgate.routing.ttft_replica import Ticket
    from tests.support.clock import FakeClock


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


def context() -> RoutingContext:
    return RoutingContext(
        affinity_index=lambda: MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300)
    )


def prepared(strategy: RoutingStrategy, request: Call) -> Call:
    """Run the strategy's once-per-request ``prepare`` (a no-op for most), as failover does."""
    asyncio.run(strategy.prepare(request))
    return request


def finish_some(ledger: Ledger, tickets: list[Ticket], rng: random.Random, clock: FakeClock,
                chance: float) -> None:
    """Random runs of scorer decisions: each open ticket, oldest first, finishes with
    ``chance`` (first token, 50 ms, release after 1-50 tokens) until one does not."""
    while tickets and rng.random() < chance:
        ticket = tickets.pop(0)
        ledger.first_token(ticket)
        clock.now_s += 0.05
        ledger.released(ticket, rng.randint(1, 50))
