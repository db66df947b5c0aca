"""The configuration schema. Every key here is documented in ``config/config.example.yaml``.

Models are frozen: configuration is read once, and nothing at request time may change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PositiveInt,
    field_validator,
    model_validator,
)

from kvgate.config.references import ReferenceProblems, reference_problems
from kvgate.config.tenants import (
    ApiKeySettings,
    BudgetSettings,
    LimitsSettings,
    RateLimitSettings,
    TenantSettings,
    sync_limits_backend,
    tenant_problems,
)

__all__ = ["ApiKeySettings", "BudgetSettings", "LimitsSettings", "RateLimitSettings",
           "TenantSettings"]  # re-exported: they lived here first


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_FrozenT = TypeVar("_FrozenT", bound=_Frozen)


StrategyName = Literal[
    "round_robin", "weighted", "least_busy", "latency", "cost", "prefix_kv_aware",
    "prefix_kv_aware_v1", "precise_kv",
]


class ServerSettings(_Frozen):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    #: Requests with a larger body are refused with 413 before they are parsed.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    #: Largest decoded size of one base64 image in a request; larger ones get 413.
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    admin_key: str | None = None
    #: Overall deadline for one client request, across all failover attempts.
    request_timeout_s: float = Field(600.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    #: The HTTP server under the ASGI app. uvicorn (uvloop + httptools) gave the lowest added
    #: latency and one process per worker in docs/BENCHMARK_REPORT.md; granian (Rust HTTP, a
    #: supervisor process per server) did better only while the machine was overloaded.
    #: kvgate: the gateway's own lean HTTP/1.1 server (kvgate.httpserver); uvicorn and granian
    #: are the general-purpose alternatives.
    http_server: Literal["kvgate", "uvicorn", "granian"] = "kvgate"
    #: The cyclic collector's thresholds (``gc.set_threshold``): tracked objects allocated
    #: between young passes, young passes per middle pass, middle passes per full pass.
    #: NOTE: Python's 700 young is 14 requests in flight at 32 concurrent KV-aware requests
    #: (~50 tracked objects each, ~450 list items to visit): a young pass every ~18 requests,
    #: 5-11 us of GC per request over HTTP. At 2000 / 3 a pass finds most requests' objects
    #: already freed: about 0 us at 32 concurrent; at 128 round robin's GC is lower, KV-aware's
    #: the same, and the longest pass 2-3 ms longer (middle passes every 3 young ones keep
    #: that from 7-37 ms, what 2000-10000 / 10 gave). Tuned on a 16-deployment, 2.5k-token
    #: load, held out on the overhead scenario's (benchmarks/results/experiments/gc_thresholds/).
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] = (2000, 3, 10)

    @field_validator("admin_key")
    @classmethod
    def _empty_key_is_none(cls, value: str | None) -> str | None:
        # ``${KVGATE_ADMIN_KEY:-}`` expands to "" when unset: that means no key, not "".
        return value or None


class MockProviderSettings(_Frozen):
    """The built-in deterministic provider: same request, same answer, no network."""

    type: Literal["mock"]
    #: Delay before the first token (blocking and streaming).
    ttft_ms: float = Field(0.0, ge=0)
    #: Decode speed; 0 means instant.
    tokens_per_s: float = Field(0.0, ge=0)
    #: Output length when the request sets no max_tokens.
    default_output_tokens: int = Field(16, ge=1)
    #: Fraction of requests that fail with ``fail_status`` (decided by a seeded RNG).
    fail_rate: float = Field(0.0, ge=0, le=1)
    fail_status: int = Field(500, ge=400, le=599)
    #: When set, streams die (connection-reset style) after this many content chunks.
    fail_after_chunks: int | None = Field(None, ge=0)
    seed: int = 0


class OpenAICompatibleSettings(_Frozen):
    """vLLM, SGLang, TGI, Ollama, LocalAI, llama.cpp's server: anything speaking /v1."""

    type: Literal["openai_compatible"]
    api_base: str
    api_key: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    #: Longest wait for the response head or for the next streamed chunk.
    read_timeout_s: float = Field(300.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    #: Whether a stream cut mid-answer resumes on another deployment (vLLM's
    #: continue_final_message). Hosted providers do not support it.
    resume_streams: bool = True


class OpenAISettings(OpenAICompatibleSettings):
    type: Literal["openai"]  # type: ignore[assignment]
    api_base: str = "https://api.openai.com/v1"
    organization: str | None = None
    resume_streams: bool = False


class AnthropicSettings(_Frozen):
    type: Literal["anthropic"]
    api_key: str | None = None
    api_base: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    #: The Messages API requires max_tokens; used when the client sets none.
    default_max_tokens: int = Field(1024, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    resume_streams: bool = False


ProviderSettings = Annotated[
    MockProviderSettings | OpenAICompatibleSettings | OpenAISettings | AnthropicSettings,
    Field(discriminator="type"),
]


class KVEventsSettings(_Frozen):
    """Where a vLLM replica's KV-cache events come from (its ``--kv-events-config``)."""

    #: The PUB side. vLLM binds it for ``tcp://*:PORT`` and *connects* to a concrete
    #: ``tcp://HOST:PORT``; the gateway does the opposite (see ``socket``).
    endpoint: str
    #: vLLM's replay ROUTER (always bound by vLLM, so the gateway always connects to it).
    replay_endpoint: str | None = None
    topic: str = "kv-events"
    #: ``connect`` to a publisher that binds (vLLM given ``tcp://*:PORT``, ``kvgate sim``);
    #: ``bind`` the endpoint for a publisher that connects (vLLM given ``tcp://GATEWAY:PORT``);
    #: ``auto`` binds wildcard (``*``, ``0.0.0.0``, ``::``), ``ipc://`` and ``inproc://``
    #: endpoints and connects to concrete hosts.
    socket: Literal["auto", "connect", "bind"] = "auto"


class DeploymentSettings(_Frozen):
    provider: str
    #: The model name sent upstream.
    model: str
    #: Optional stable id; defaults to ``<provider>/<model>``.
    id: str | None = None
    weight: float = Field(1.0, gt=0)
    cost_per_1k_input: float = Field(0.0, ge=0)
    cost_per_1k_output: float = Field(0.0, ge=0)
    #: In-flight requests above which cost routing overflows to the next deployment.
    max_concurrency: int | None = Field(None, ge=1)
    #: vLLM's --block-size, for KV-aware routing.
    block_size: int = Field(16, ge=1)
    #: The model's tokenizer for token-exact block hashes (``precise_kv``): a local directory
    #: with ``tokenizer.json`` (and ``tokenizer_config.json`` with the chat template), or
    #: ``kvgate-sim:<profile>`` for ``kvgate sim`` replicas. Nothing is ever downloaded.
    tokenizer: str | None = None
    hash_algo: Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"] = "sha256"
    #: The replica's PYTHONHASHSEED, which seeds vLLM's NONE_HASH; None = unset there (vLLM
    #: then uses a fixed seed for sha256*, and a secret random one for xxhash*, which makes
    #: xxhash hashes unreproducible: precise routing then keys blocks by the events' tokens).
    hash_seed: str | None = None
    #: vLLM's ``--model`` (the model id its image hashes include); None = ``model``.
    mm_model_id: str | None = None
    #: Vision tokens per image for a local ``tokenizer`` (None: LLaVA-OneVision's size rule
    #: when the model is LLaVA-OneVision, otherwise images end the exact-hash prefix).
    image_tokens: int | None = Field(None, ge=1)
    #: When ``model`` is a LoRA adapter: the path vLLM loaded it from (its block-hash key).
    lora_path: str | None = None
    kv_events: KVEventsSettings | None = None
    #: The replica's KV cache in tokens (vLLM: ``num_gpu_blocks x block_size``), for engines
    #: that do not publish ``vllm:cache_config_info``; None: read it from the engine.
    kv_capacity_tokens: int | None = Field(None, ge=1)
    #: The most output tokens one request gets here when it sets no max_tokens; the limits
    #: stage reserves budget for it (None: ``limits.default_max_output_tokens``).
    max_output_tokens: int | None = Field(None, ge=1)


class BreakerSettings(_Frozen):
    """When a deployment is ejected, and for how long.

    A circuit opens after ``consecutive_failures`` retryable failures in a row, or when at
    least ``min_requests`` attempts in the last ``window_s`` failed at a rate of ``error_rate``
    or more. It stays open for ``cooldown_s``, then admits one probe (half-open): success
    closes it, failure opens it for another cooldown.
    """

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(10, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class PrefixRoutingSettings(_Frozen):
    """``prefix_kv_aware``: how prompts are fingerprinted, remembered and balanced."""

    #: Characters per fingerprint block (about a quarter as many tokens). Smaller blocks match
    #: more precisely and cost more per request.
    block_chars: int = Field(256, ge=16)
    #: Bound on remembered (deployment, block) pairs per model, split across its deployments.
    max_tracked_blocks: int = Field(1_000_000, ge=1000)
    #: A block not served for this long is assumed evicted by the engine.
    ttl_s: float = Field(300.0, gt=0)
    #: The TTFT model's starting figures for a replica it has not timed yet, replaced by what
    #: it observes within a few dozen requests (``/admin/stats`` shows the learned ones):
    #: prefill speed (tokens per second) and decode step (milliseconds).
    prefill_tokens_per_s_prior: float = Field(10_000.0, gt=0)
    decode_step_ms_prior: float = Field(25.0, gt=0)
    #: Prefill tokens an engine computes per step (vLLM's ``max_num_batched_tokens``): how many
    #: steps, each also a decode step for the running batch, a queue of prefill takes.
    prefill_chunk_tokens: int = Field(2048, ge=1)
    #: ``prefix_kv_aware_v1`` only (the comparison arm): its load guard in requests, its
    #: ratio guard, and the share of the prompt a match must cover to be followed.
    max_excess_requests: float = Field(16.0, ge=0)
    max_excess_ratio: float = Field(0.5, ge=0)
    min_match_ratio: float = Field(0.5, ge=0, le=1)
    #: How often engine metrics (vLLM's /metrics: running, waiting, KV usage) are scraped
    #: for ``openai_compatible`` deployments; 0 turns scraping off.
    engine_metrics_interval_s: float = Field(1.0, ge=0)


class PreciseRoutingSettings(_Frozen):
    """``precise_kv``: exact KV-cache contents from vLLM's KV events.

    Scoring and the load guard are ``prefix``'s; only the matched tokens differ.
    """

    #: How fast a replica brings offloaded (CPU-tier, LMCache) KV back, in tokens per second:
    #: a CPU-tier hit costs this load time instead of its prefill.
    offload_load_tokens_per_s: float = Field(200_000.0, gt=0)
    #: Blocks of a dispatched request count as held on its replica for this long before the
    #: replica's events confirm them, so a burst of one new prefix is not spread cold.
    pending_ttl_s: float = Field(10.0, ge=0)
    #: Bound on tracked blocks per deployment (a guard against lost removals); LRU beyond it.
    max_blocks_per_deployment: int = Field(2_000_000, ge=1000)
    #: How long a replay request may take before the replica counts as out of sync.
    replay_timeout_s: float = Field(2.0, gt=0)
    #: With no events for this long, ask the replay socket for anything newer: catches a lost
    #: last message and an unreachable publisher. 0 turns the probe off.
    idle_probe_s: float = Field(5.0, ge=0)
    #: Prompts longer than this (characters) are tokenized and hashed off the event loop.
    offload_chars: int = Field(32_768, ge=0)


class RoutingSettings(_Frozen):
    """Top-level ``routing`` is the default; a model's ``routing`` overrides the keys it sets."""

    strategy: StrategyName = "round_robin"
    #: Where prefix_kv_aware's affinity index lives: ``memory`` (this process), ``shared_memory``
    #: (a table every worker of one ``kvgate run`` maps), ``redis`` (every gateway sharing it);
    #: ``auto`` is ``shared_memory`` with several workers and ``memory`` with one.
    affinity_backend: Literal["auto", "memory", "shared_memory", "redis"] = "auto"
    #: The shared-memory segment holding the index; ``kvgate run`` sets it for its workers.
    #: Unset with ``shared_memory``: a table of this process's own.
    affinity_segment: str | None = None
    #: Attempts per request across deployments (1 = no failover).
    max_attempts: int = Field(3, ge=1)
    breaker: BreakerSettings = BreakerSettings()
    #: How often deployments with an open or half-open circuit are probed (the provider's
    #: /models or /health); a passing probe ends the cooldown early. 0 turns probing off.
    #: Read from the top-level ``routing`` only: one checker serves all models.
    health_check_interval_s: float = Field(10.0, ge=0)
    health_check_timeout_s: float = Field(5.0, gt=0)
    #: Seed for strategies that sample (latency's power-of-two choices); None draws one per
    #: process, so several gateway workers do not make the same picks in lockstep.
    seed: int | None = None
    #: Half-life of a latency sample: an EWMA not refreshed for this long counts half as much,
    #: so a deployment that was slow is tried again after a while instead of never.
    latency_half_life_s: float = Field(10.0, gt=0)
    prefix: PrefixRoutingSettings = PrefixRoutingSettings()
    precise: PreciseRoutingSettings = PreciseRoutingSettings()


class ModelSettings(_Frozen):
    name: str = Field(min_length=1)
    routing: RoutingSettings | None = None
    deployments: list[DeploymentSettings] = Field(min_length=1)


class ExactCacheSettings(_Frozen):
    enabled: bool = True
    ttl_s: float = Field(3600.0, gt=0)
    max_entries: int = Field(10_000, ge=1)


class SemanticCacheSettings(_Frozen):
    enabled: bool = False
    #: Cosine similarity of the last user message's text to a cached one, at least.
    threshold: float = Field(0.95, gt=0, le=1)
    #: hashing (built in: near-identical wording) or minilm (all-MiniLM-L6-v2: rewordings;
    #: `python -m kvgate.cache.minilm fetch` once).
    embedder: Literal["hashing", "minilm"] = "hashing"
    ttl_s: float = Field(3600.0, gt=0)
    #: Entries kept in this process, oldest evicted first (never shared through Redis).
    max_entries: int = Field(10_000, ge=1)


class CacheSettings(_Frozen):
    #: Where exact-cache entries live: this process, or Redis (shared by every gateway).
    backend: Literal["memory", "redis"] = "memory"
    exact: ExactCacheSettings = ExactCacheSettings()
    semantic: SemanticCacheSettings = SemanticCacheSettings()


class RedisSettings(_Frozen):
    url: str = "redis://localhost:6379/0"


class Settings(_Frozen):
    server: ServerSettings = ServerSettings()
    providers: dict[str, ProviderSettings]
    models: list[ModelSettings] = Field(min_length=1)
    routing: RoutingSettings = RoutingSettings()
    cache: CacheSettings = CacheSettings()
    tenants: list[TenantSettings] = Field(default_factory=list)
    #: The older spelling of ``limits.backend``; the two always agree once validated.
    limits_backend: Literal["memory", "redis"] = "memory"
    limits: LimitsSettings = LimitsSettings()
    redis: RedisSettings = RedisSettings()

    def routing_for(self, model: ModelSettings) -> RoutingSettings:
        """The model's routing: the top-level ``routing`` with the keys the model sets on top."""
        if model.routing is None:
            return self.routing
        return _overlay(self.routing, model.routing)

    @model_validator(mode="wrap")
    @classmethod
    def _check_references(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        settings = handler(sync_limits_backend(data))
        problems = reference_problems(data) if isinstance(data, Mapping) else []
        problems += [(("tenants",), message) for message in tenant_problems(
            settings.tenants, {m.name for m in settings.models})]
        if problems:
            raise ReferenceProblems(problems)
        return settings


def _overlay(base: _FrozenT, override: _FrozenT) -> _FrozenT:
    """``base`` with the fields ``override`` was given explicitly, nested models merged too."""
    update: dict[str, object] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        base_value = getattr(base, name)
        if isinstance(value, _Frozen) and type(value) is type(base_value):
            value = _overlay(base_value, value)
        update[name] = value
    return base.model_copy(update=update)
