"""The active health checker, in process: who is probed, what a result does, start/stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace

from kvgate.config.schema import BreakerSettings
from kvgate.core.deployment import Deployment
from kvgate.core.provider import JSONObject, UpstreamCall
from kvgate.resilience.breaker import CircuitBreakerBoard
from kvgate.resilience.health import HealthChecker
from tests.routing.factories import deployment


class Upstream:
    """A provider whose liveness probe the test controls."""

    def __init__(self, healthy: bool = True, delay_s: float = 0.0) -> None:
        self.healthy = healthy
        self.delay_s = delay_s
        self.checks = 0

    async def complete(self, call: UpstreamCall) -> JSONObject:
        raise NotImplementedError

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[JSONObject, None]:
        raise NotImplementedError
        yield {}

    async def check_health(self) -> bool:
        self.checks += 1
        await asyncio.sleep(self.delay_s)
        return self.healthy

    async def aclose(self) -> None:
        return None


def on(upstream: Upstream, name: str, provider_name: str) -> Deployment:
    return replace(deployment(name), provider=upstream, provider_name=provider_name)


def ejected(breakers: CircuitBreakerBoard, *deployments: Deployment) -> None:
    for d in deployments:
        breakers.watch(d, BreakerSettings(consecutive_failures=1, cooldown_s=600))
        breakers.record_failure(d)


async def test_probes_only_ejected_deployments_once_per_provider() -> None:
    shared, alone, fine = Upstream(), Upstream(), Upstream()
    # Two models' deployments on one provider, one on another, one healthy elsewhere.
    a1, a2 = on(shared, "a1", "shared"), on(shared, "a2", "shared")
    b, c = on(alone, "b", "alone"), on(fine, "c", "fine")
    breakers = CircuitBreakerBoard()
    ejected(breakers, a1, a2, b)
    breakers.watch(c, BreakerSettings())
    checker = HealthChecker([a1, a2, b, c], breakers, interval_s=60, timeout_s=1)
    alone.healthy = False
    await checker.check_once()
    assert (shared.checks, alone.checks, fine.checks) == (1, 1, 0)
    assert [breakers.state_code(d) for d in (a1, a2, b, c)] == [1, 1, 2, 0]


async def test_a_hung_probe_counts_as_a_failure_after_the_timeout() -> None:
    hung = Upstream(delay_s=10)
    d = on(hung, "d", "hung")
    breakers = CircuitBreakerBoard()
    ejected(breakers, d)
    checker = HealthChecker([d], breakers, interval_s=60, timeout_s=0.05)
    await asyncio.wait_for(checker.check_once(), timeout=2)
    assert breakers.state_code(d) == 2


async def test_background_loop_brings_a_deployment_back_and_stops_cleanly() -> None:
    upstream = Upstream(healthy=False)
    d = on(upstream, "d", "up")
    breakers = CircuitBreakerBoard()
    ejected(breakers, d)
    checker = HealthChecker([d], breakers, interval_s=0.01, timeout_s=1)
    checker.start()
    try:
        while upstream.checks < 3:
            await asyncio.sleep(0.01)
        assert breakers.state_code(d) == 2
        upstream.healthy = True
        async with asyncio.timeout(2):
            while breakers.state_code(d) != 1:
                await asyncio.sleep(0.01)
    finally:
        await checker.stop()
    checks = upstream.checks
    await asyncio.sleep(0.05)
    assert upstream.checks == checks  # stopped means stopped
    await checker.stop()  # idempotent
