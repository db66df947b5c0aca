"""Build the whole journey from settings, once: the only place stages are wired together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as redis_async

from kvgate.cache.embedders import build_embedder
from kvgate.cache.semantic import SemanticIndex
from kvgate.cache.stage import ResponseCacheStage, SemanticCache
from kvgate.cache.store import MemoryResponseStore, ResponseStore
from kvgate.cache.store_redis import RedisResponseStore
from kvgate.config.schema import DeploymentSettings, RoutingSettings, Settings
from kvgate.gateway.call import Stage
from kvgate.limits import LimitsStage, MemoryLimitStore, RedisLimitStore, TenantPolicy
from kvgate.limits.store import LimitStore
from kvgate.observability.metrics import Metrics
from kvgate.providers import Provider, build_provider
from kvgate.resilience.breaker import BreakerBoard, CircuitBreakerBoard
from kvgate.resilience.failover import Failover, ModelRoute
from kvgate.resilience.health import HealthChecker
from kvgate.routing import RoutingContext, build_strategy
from kvgate.routing.affinity import AffinityIndex, MemoryAffinityIndex
from kvgate.routing.affinity_redis import RedisAffinityIndex
from kvgate.routing.base import BackgroundStrategy
from kvgate.routing.deployment import Deployment, DeploymentId
from kvgate.routing.engine_metrics import EngineMetricsScraper, metrics_url


@dataclass
class Gateway:
    """Everything one app instance owns; no module-level state anywhere."""

    settings: Settings
    pipeline: Stage
    routes: dict[str, ModelRoute]
    metrics: Metrics
    breakers: BreakerBoard
    providers: dict[str, Provider]
    cache: ResponseCacheStage | None = None
    limits: LimitsStage | None = None
    model_names: list[str] = field(default_factory=list)
    health: HealthChecker | None = None
    engine_metrics: EngineMetricsScraper | None = None
    #: Strategies with background work (KV event subscribers), started with the gateway.
    background: list[BackgroundStrategy] = field(default_factory=list)
    #: Awaited at shutdown after the providers: shared clients (Redis) and the like.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

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
        if self.engine_metrics is not None:
            self.engine_metrics.start()
        for strategy in self.background:
            strategy.start()

    async def aclose(self) -> None:
        for strategy in self.background:
            await strategy.stop()
        if self.health is not None:
            await self.health.stop()
        if self.engine_metrics is not None:
            await self.engine_metrics.stop()
        for provider in self.providers.values():
            await provider.aclose()
        for close in self.closers:
            await close()


def _deployment_id(settings: DeploymentSettings, taken: set[str]) -> DeploymentId:
    base = settings.id or f"{settings.provider}/{settings.model}"
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}#{suffix}", suffix + 1
    taken.add(candidate)
    return DeploymentId(candidate)


class _SharedRedis:
    """One Redis client for every component that asks, created on first use."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.client: redis_async.Redis | None = None

    def get(self) -> redis_async.Redis:
        if self.client is None:
            # NOTE: without timeouts a stalled (not down) Redis would hang every request that
            # waits on it (limits, affinity, cache); with them, each falls back as when down.
            self.client = redis_async.Redis.from_url(
                self._url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def _affinity_factory(
    model: str, routing: RoutingSettings, num_deployments: int, redis: _SharedRedis
) -> Callable[[], AffinityIndex]:
    prefix = routing.prefix

    def build() -> AffinityIndex:
        if routing.affinity_backend == "redis":
            return RedisAffinityIndex(redis.get(), key_prefix=f"kvgate:aff:{model}",
                                      ttl_s=prefix.ttl_s)
        return MemoryAffinityIndex(
            max_blocks_per_deployment=max(1, prefix.max_tracked_blocks // num_deployments),
            ttl_s=prefix.ttl_s,
        )

    return build


def _cache_stage(settings: Settings, pipeline: Stage, metrics: Metrics, redis: _SharedRedis,
                 ) -> ResponseCacheStage:
    exact, semantic = settings.cache.exact, settings.cache.semantic
    store: ResponseStore = (
        RedisResponseStore(redis.get(), max_entries=exact.max_entries, ttl_s=exact.ttl_s)
        if settings.cache.backend == "redis"
        else MemoryResponseStore(max_entries=exact.max_entries, ttl_s=exact.ttl_s)
    )
    semantic_cache = None
    if semantic.enabled:
        embedder = build_embedder(semantic.embedder)
        index = SemanticIndex(dimensions=embedder.dimensions, max_entries=semantic.max_entries,
                              ttl_s=semantic.ttl_s)
        semantic_cache = SemanticCache(index, embedder, semantic.threshold,
                                       embed_off_loop=semantic.embedder != "hashing")
    return ResponseCacheStage(pipeline, store, metrics, semantic_cache,
                              exact_enabled=exact.enabled)


def build_gateway(settings: Settings) -> Gateway:
    providers = {name: build_provider(name, ps) for name, ps in settings.providers.items()}
    metrics = Metrics()
    breakers = CircuitBreakerBoard()
    routes: dict[str, ModelRoute] = {}
    watched: list[tuple[str, Deployment]] = []
    redis = _SharedRedis(settings.redis.url)
    scrape_targets: list[tuple[Deployment, str]] = []
    background: list[BackgroundStrategy] = []
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
        context = RoutingContext(
            affinity_index=_affinity_factory(model.name, routing, len(deployments), redis)
        )
        strategy = build_strategy(routing.strategy, deployments, routing, context)
        routes[model.name] = ModelRoute.build(
            model.name, deployments, strategy, routing.max_attempts
        )
        if callable(getattr(strategy, "start", None)):
            background.append(strategy)  # type: ignore[arg-type]
        if (routing.strategy in ("prefix_kv_aware", "precise_kv")
                and routing.prefix.engine_metrics_interval_s):
            for deployment in deployments:
                api_base = getattr(settings.providers[deployment.provider_name], "api_base", None)
                if settings.providers[deployment.provider_name].type == "openai_compatible":
                    scrape_targets.append((deployment, metrics_url(str(api_base))))
    metrics.watch_deployments(watched, breakers.state_code)
    pipeline: Stage = Failover(
        routes, breakers, metrics, request_timeout_s=settings.server.request_timeout_s
    )
    cache = None
    closers: list[Callable[[], Awaitable[None]]] = []
    if settings.cache.exact.enabled or settings.cache.semantic.enabled:
        cache = _cache_stage(settings, pipeline, metrics, redis)
        pipeline = cache
        closers.append(cache.aclose)
    limits = None
    policies = [p for p in map(TenantPolicy.from_settings, settings.tenants) if p is not None]
    if policies:
        limit_store: LimitStore = (
            RedisLimitStore(redis.get()) if settings.limits_backend == "redis"
            else MemoryLimitStore()
        )
        limits = LimitsStage(pipeline, limit_store, policies, metrics)
        pipeline = limits
        closers.append(limit_store.aclose)
    closers.append(redis.aclose)
    health = None
    if settings.routing.health_check_interval_s > 0:
        health = HealthChecker(
            [d for _, d in watched], breakers,
            interval_s=settings.routing.health_check_interval_s,
            timeout_s=settings.routing.health_check_timeout_s,
        )
    engine_metrics = None
    if scrape_targets:
        engine_metrics = EngineMetricsScraper(
            scrape_targets, interval_s=settings.routing.prefix.engine_metrics_interval_s
        )
    return Gateway(
        engine_metrics=engine_metrics,
        background=background,
        closers=closers,
        settings=settings,
        pipeline=pipeline,
        routes=routes,
        metrics=metrics,
        breakers=breakers,
        providers=providers,
        cache=cache,
        limits=limits,
        model_names=[m.name for m in settings.models],
        health=health,
    )
