"""Build the whole journey from settings, once: the only place stages are wired together."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvgate.cache.exact import ExactCacheStage
from kvgate.cache.store import MemoryResponseStore
from kvgate.config.schema import DeploymentSettings, Settings
from kvgate.gateway.call import Stage
from kvgate.observability.metrics import Metrics
from kvgate.providers import Provider, build_provider
from kvgate.resilience.breaker import BreakerBoard, CircuitBreakerBoard
from kvgate.resilience.failover import Failover, ModelRoute
from kvgate.resilience.health import HealthChecker
from kvgate.routing import build_strategy
from kvgate.routing.deployment import Deployment, DeploymentId


@dataclass
class Gateway:
    """Everything one app instance owns; no module-level state anywhere."""

    settings: Settings
    pipeline: Stage
    routes: dict[str, ModelRoute]
    metrics: Metrics
    breakers: BreakerBoard
    providers: dict[str, Provider]
    cache: ExactCacheStage | None = None
    model_names: list[str] = field(default_factory=list)
    health: HealthChecker | None = None

    def is_ready(self) -> bool:
        """Every model has at least one deployment whose circuit admits traffic."""
        return all(
            any(self.breakers.allows(d) for d in route.deployments)
            for route in self.routes.values()
        )

    async def start(self) -> None:
        """Start background work (health checks); called once the event loop runs."""
        if self.health is not None:
            self.health.start()

    async def aclose(self) -> None:
        if self.health is not None:
            await self.health.stop()
        for provider in self.providers.values():
            await provider.aclose()


def _deployment_id(settings: DeploymentSettings, taken: set[str]) -> DeploymentId:
    base = settings.id or f"{settings.provider}/{settings.model}"
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}#{suffix}", suffix + 1
    taken.add(candidate)
    return DeploymentId(candidate)


def build_gateway(settings: Settings) -> Gateway:
    providers = {name: build_provider(name, ps) for name, ps in settings.providers.items()}
    metrics = Metrics()
    breakers = CircuitBreakerBoard()
    routes: dict[str, ModelRoute] = {}
    watched: list[tuple[str, Deployment]] = []
    for model in settings.models:
        routing = settings.routing_for(model)
        taken: set[str] = set()
        deployments = [
            Deployment(
                id=_deployment_id(ds, taken),
                provider_name=ds.provider,
                provider=providers[ds.provider],
                upstream_model=ds.model,
                settings=ds,
                resumes_streams=getattr(settings.providers[ds.provider], "resume_streams", False)
                or settings.providers[ds.provider].type == "mock",
            )
            for ds in model.deployments
        ]
        for deployment in deployments:
            deployment.stats.latency_half_life_s = routing.latency_half_life_s
            if routing.breaker.enabled:
                breakers.watch(deployment, routing.breaker)
        watched.extend((model.name, d) for d in deployments)
        routes[model.name] = ModelRoute(
            name=model.name,
            deployments=deployments,
            strategy=build_strategy(routing.strategy, deployments, routing),
            max_attempts=routing.max_attempts,
        )
    metrics.watch_deployments(watched, breakers.state_code)
    pipeline: Stage = Failover(
        routes, breakers, metrics, request_timeout_s=settings.server.request_timeout_s
    )
    cache = None
    if settings.cache.exact.enabled:
        store = MemoryResponseStore(
            max_entries=settings.cache.exact.max_entries, ttl_s=settings.cache.exact.ttl_s
        )
        cache = ExactCacheStage(pipeline, store, metrics)
        pipeline = cache
    health = None
    if settings.routing.health_check_interval_s > 0:
        health = HealthChecker(
            [d for _, d in watched], breakers,
            interval_s=settings.routing.health_check_interval_s,
            timeout_s=settings.routing.health_check_timeout_s,
        )
    return Gateway(
        settings=settings,
        pipeline=pipeline,
        routes=routes,
        metrics=metrics,
        breakers=breakers,
        providers=providers,
        cache=cache,
        model_names=[m.name for m in settings.models],
        health=health,
    )
