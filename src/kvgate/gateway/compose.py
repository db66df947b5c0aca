"""Build the whole journey from settings, once: the only place stages are wired together.

The journey is one ordered list of stages, outermost first, folded into a pipeline by one loop
(starlette's ``build_middleware_stack`` is the model)::

    auth -> parse -> limits -> response cache -> failover (routing -> provider)

A stage that is not configured (no tenants, no limits, no cache) is left out of the list, so
it costs nothing per request. What each strategy and provider needs (background work, engine
metrics, stream resume) comes from its registry entry: nothing here branches on a name.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvgate.auth.keys import KeyRing
from kvgate.auth.stage import AuthStage
from kvgate.config.schema import DeploymentSettings, RoutingSettings, Settings
from kvgate.core.call import Stage
from kvgate.core.deployment import Deployment, DeploymentId
from kvgate.observability.metrics import Metrics
from kvgate.providers import Provider, build_provider, provider_entry
from kvgate.request.stage import ParseStage
from kvgate.resilience.breaker import BreakerBoard, CircuitBreakerBoard
from kvgate.resilience.failover import Failover, ModelRoute
from kvgate.resilience.health import HealthChecker
from kvgate.routing import RoutingContext, RoutingStrategy, strategy_entry
from kvgate.routing.affinity import AffinityIndex, MemoryAffinityIndex
from kvgate.routing.engine_metrics import EngineMetricsScraper

if TYPE_CHECKING:
    import redis.asyncio as redis_async

#: Closes something the gateway owns, at shutdown.
Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Layer:
    """One stage before dispatch: its name (for ``/admin/stats``) and how it wraps the next."""

    name: str
    wrap: Callable[[Stage], Stage]


@dataclass
class Gateway:
    """Everything one app instance owns; no module-level state anywhere."""

    settings: Settings
    pipeline: Stage
    routes: dict[str, ModelRoute]
    metrics: Metrics
    breakers: BreakerBoard
    providers: dict[str, Provider]
    #: The built stages by layer name, outermost first (failover not included).
    stages: dict[str, Stage] = field(default_factory=dict)
    model_names: list[str] = field(default_factory=list)
    health: HealthChecker | None = None
    engine_metrics: EngineMetricsScraper | None = None
    #: Strategies with background work (KV event subscribers), started with the gateway.
    background: list[RoutingStrategy] = field(default_factory=list)
    #: Awaited at shutdown after the providers: stores, shared clients (Redis) and the like.
    closers: list[Closer] = field(default_factory=list)

    def is_ready(self) -> bool:
        """Every model has at least one deployment whose circuit admits traffic."""
        return all(
            any(self.breakers.allows(d) for d in route.deployments)
            for route in self.routes.values()
        )

    def describe_stage(self, name: str) -> dict[str, Any] | None:
        """A configured stage's live state for ``/admin/stats``; None when it is not built."""
        stage = self.stages.get(name)
        return None if stage is None else stage.describe()

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


class SharedRedis:
    """One Redis client for every component that asks, created on first use (and the Redis
    client library imported only then: a gateway without Redis never loads it)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.client: redis_async.Redis | None = None

    def get(self) -> redis_async.Redis:
        if self.client is None:
            import redis.asyncio as redis_async

            # NOTE: without timeouts a stalled (not down) Redis would hang every request that
            # waits on it (limits, affinity, cache); with them, each falls back as when down.
            self.client = redis_async.Redis.from_url(
                self._url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def affinity_index_factory(
    model: str, routing: RoutingSettings, num_deployments: int, redis: SharedRedis,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], AffinityIndex]:
    """Builds one model's affinity index (memory, shared memory or Redis) for strategies that
    use one; the benchmarks call this too, so they route exactly as the gateway does.

    ``auto`` is shared memory when ``kvgate run`` made a segment for its workers (it sets
    ``affinity_segment``), else memory. ``clock``: the in-memory index's, which must be the
    strategy's (the simulator's virtual clock in benchmarks).
    """
    prefix = routing.prefix
    backend = routing.affinity_backend
    if backend == "auto":
        backend = "memory" if routing.affinity_segment is None else "shared_memory"

    def build() -> AffinityIndex:
        if backend == "redis":
            from kvgate.routing.affinity_redis import RedisAffinityIndex

            return RedisAffinityIndex(redis.get(), key_prefix=f"kvgate:aff:{model}",
                                      ttl_s=prefix.ttl_s)
        if backend == "shared_memory":
            from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
            from kvgate.routing.shm_table import AffinityTable

            segment = routing.affinity_segment
            table = (AffinityTable.private(prefix.max_tracked_blocks,
                                           columns=max(1, num_deployments))
                     if segment is None else AffinityTable.attach(segment))
            return SharedMemoryAffinityIndex(table, namespace=model, ttl_s=prefix.ttl_s)
        return MemoryAffinityIndex(
            max_blocks_per_deployment=max(1, prefix.max_tracked_blocks // num_deployments),
            ttl_s=prefix.ttl_s, clock=clock,
        )

    return build


def _deployment_id(settings: DeploymentSettings, taken: set[str]) -> DeploymentId:
    base = settings.id or f"{settings.provider}/{settings.model}"
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}#{suffix}", suffix + 1
    taken.add(candidate)
    return DeploymentId(candidate)


@dataclass
class _Fleet:
    """The routing side, built per model: routes, and what runs beside them."""

    routes: dict[str, ModelRoute] = field(default_factory=dict)
    watched: list[tuple[str, Deployment]] = field(default_factory=list)
    scrape_targets: list[tuple[Deployment, str]] = field(default_factory=list)
    background: list[RoutingStrategy] = field(default_factory=list)


def _build_fleet(settings: Settings, providers: dict[str, Provider],
                 breakers: CircuitBreakerBoard,
                 redis: SharedRedis) -> _Fleet:
    fleet = _Fleet()
    for model in settings.models:
        routing = settings.routing_for(model)
        taken: set[str] = set()
        deployments = []
        for ds in model.deployments:
            provider_settings = settings.providers[ds.provider]
            deployments.append(Deployment(
                id=_deployment_id(ds, taken),
                provider_name=ds.provider,
                provider=providers[ds.provider],
                upstream_model=ds.model,
                settings=ds,
                resumes_streams=provider_entry(provider_settings).resumes_streams(
                    provider_settings),
            ))
        for deployment in deployments:
            deployment.stats.latency_half_life_s = routing.latency_half_life_s
            if routing.breaker.enabled:
                breakers.watch(deployment, routing.breaker)
        fleet.watched.extend((model.name, d) for d in deployments)
        entry = strategy_entry(routing.strategy)
        context = RoutingContext(
            affinity_index=affinity_index_factory(model.name, routing, len(deployments), redis),
            write_behind=True,
        )
        strategy = entry.factory(deployments, routing, context)
        fleet.routes[model.name] = ModelRoute(
            model.name, deployments, strategy, routing.max_attempts,
            prepare=strategy.prepare if entry.prepares else None,
            observes_progress=entry.observes_progress,
        )
        if entry.runs_in_background:
            fleet.background.append(strategy)
        if entry.reads_engine_metrics and routing.prefix.engine_metrics_interval_s:
            for deployment in deployments:
                provider_settings = settings.providers[deployment.provider_name]
                url = provider_entry(provider_settings).engine_metrics_url(provider_settings)
                if url is not None:
                    fleet.scrape_targets.append((deployment, url))
    return fleet


def _layers(settings: Settings, metrics: Metrics, redis: SharedRedis,
            closers: list[Closer]) -> list[Layer]:
    """The stages before dispatch, outermost first; unconfigured ones are left out."""
    layers: list[Layer] = []
    if settings.tenants:
        keys = KeyRing(settings.tenants)
        layers.append(Layer("auth", lambda inner: AuthStage(inner, keys)))
    models = [m.name for m in settings.models]
    max_image_bytes = settings.server.max_image_bytes
    layers.append(Layer("parse", lambda inner: ParseStage(
        inner, models=models, max_image_bytes=max_image_bytes)))
    limits = _limits_layer(settings, metrics, redis, closers)
    if limits is not None:
        layers.append(limits)
    if settings.cache.exact.enabled or settings.cache.semantic.enabled:
        layers.append(_cache_layer(settings, metrics, redis, closers))
    return layers


def _limits_layer(settings: Settings, metrics: Metrics, redis: SharedRedis,
                  closers: list[Closer]) -> Layer | None:
    """Tenants' model access and limits, with everything per model (prices, output caps)
    computed here once; None when no tenant has limits or a model list."""
    from kvgate.config.schema import ApiKeySettings
    from kvgate.limits import LimitsStage, MemoryLimitStore, TenantPolicy
    from kvgate.limits.access import ModelAccess
    from kvgate.limits.estimate import CostEstimator, ModelPrice
    from kvgate.limits.stage import backend_error_counter
    from kvgate.limits.store import LimitStore

    policies = [p for p in map(TenantPolicy.from_settings, settings.tenants) if p is not None]
    key_policies = {
        (tenant.name, key.name): policy
        for tenant in settings.tenants for key in tenant.api_keys
        if isinstance(key, ApiKeySettings)
        and (policy := TenantPolicy.for_key(tenant.name, key)) is not None
    }
    access = ModelAccess(settings.tenants)
    if not policies and not key_policies and not access.restricts:
        return None
    limits = settings.limits
    estimator = CostEstimator(
        {m.name: ModelPrice.of(m.deployments, limits.default_max_output_tokens)
         for m in settings.models},
        prompt_chars_per_token=limits.prompt_chars_per_token)
    count_error = backend_error_counter(metrics, limits.on_backend_error)
    # A reservation outlives the request's deadline, so only a dead gateway's ones expire.
    ttl_s = settings.server.request_timeout_s + limits.reservation_margin_s
    store: LimitStore
    if limits.backend == "redis":
        from kvgate.limits.store_redis import RedisLimitStore

        store = RedisLimitStore(redis.get(), reservation_ttl_s=ttl_s,
                                on_backend_error=count_error)
    else:
        store = MemoryLimitStore(reservation_ttl_s=ttl_s)
    closers.append(store.aclose)
    return Layer("limits", lambda inner: LimitsStage(
        inner, store, policies, metrics, estimator=estimator, key_policies=key_policies,
        access=access if access.restricts else None,
        fail_closed=limits.on_backend_error == "fail_closed", on_backend_error=count_error))


def _cache_layer(settings: Settings, metrics: Metrics, redis: SharedRedis,
                 closers: list[Closer]) -> Layer:
    from kvgate.cache.stage import ResponseCacheStage
    from kvgate.cache.store import MemoryResponseStore, ResponseStore

    exact, semantic = settings.cache.exact, settings.cache.semantic
    store: ResponseStore
    if settings.cache.backend == "redis":
        from kvgate.cache.store_redis import RedisResponseStore

        store = RedisResponseStore(redis.get(), max_entries=exact.max_entries, ttl_s=exact.ttl_s)
    else:
        store = MemoryResponseStore(max_entries=exact.max_entries, ttl_s=exact.ttl_s)
    closers.append(store.aclose)
    semantic_cache = None
    if semantic.enabled:
        from kvgate.cache.stage import SemanticCache

        semantic_cache = SemanticCache.from_settings(semantic)
    return Layer("cache", lambda inner: ResponseCacheStage(
        inner, store, metrics, semantic_cache, exact_enabled=exact.enabled))


def build_pipeline(layers: list[Layer], innermost: Stage) -> tuple[Stage, dict[str, Stage]]:
    """Fold ``layers`` (outermost first) around ``innermost``; also return each built stage
    by name."""
    pipeline = innermost
    built: dict[str, Stage] = {}
    for layer in reversed(layers):
        pipeline = built[layer.name] = layer.wrap(pipeline)
    return pipeline, dict(reversed(built.items()))


def build_gateway(settings: Settings) -> Gateway:
    providers = {name: build_provider(name, ps) for name, ps in settings.providers.items()}
    metrics = Metrics()
    breakers = CircuitBreakerBoard()
    redis = SharedRedis(settings.redis.url)
    fleet = _build_fleet(settings, providers, breakers, redis)
    metrics.watch_deployments(fleet.watched, breakers.state_code)
    failover = Failover(
        fleet.routes, breakers, metrics, request_timeout_s=settings.server.request_timeout_s
    )
    closers: list[Closer] = []
    pipeline, stages = build_pipeline(_layers(settings, metrics, redis, closers), failover)
    closers.append(redis.aclose)
    health = None
    if settings.routing.health_check_interval_s > 0:
        health = HealthChecker(
            [d for _, d in fleet.watched], breakers,
            interval_s=settings.routing.health_check_interval_s,
            timeout_s=settings.routing.health_check_timeout_s,
        )
    engine_metrics = None
    if fleet.scrape_targets:
        engine_metrics = EngineMetricsScraper(
            fleet.scrape_targets, interval_s=settings.routing.prefix.engine_metrics_interval_s
        )
    return Gateway(
        settings=settings,
        pipeline=pipeline,
        routes=fleet.routes,
        metrics=metrics,
        breakers=breakers,
        providers=providers,
        stages=stages,
        model_names=[m.name for m in settings.models],
        health=health,
        engine_metrics=engine_metrics,
        background=fleet.background,
        closers=closers,
    )
