"""A deployment at run time: its provider, its prices, and the live numbers routing reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NewType

from kvgate.config.schema import DeploymentSettings
from kvgate.core.provider import Provider

DeploymentId = NewType("DeploymentId", str)


@dataclass(eq=False, slots=True)
class DeploymentStats:
    """Counters changed synchronously by the failover stage around each attempt.

    Every increment of ``in_flight`` is paired with a decrement in a ``finally`` block, so the
    count returns to zero after errors, timeouts and client disconnects.
    """

    in_flight: int = 0
    requests_total: int = 0
    failures_total: int = 0
    cost_usd_total: float = 0.0
    #: Exponentially weighted moving averages, None until the first sample: time to first
    #: token of streams, and latency per output token of blocking requests.
    ewma_ttft_ms: float | None = None
    ewma_ms_per_token: float | None = None
    #: ``time.monotonic()`` of the sample behind each average.
    ttft_sampled_monotonic_s: float = 0.0
    per_token_sampled_monotonic_s: float = 0.0
    #: How fast an average goes stale: its weight against a new sample, and its value as the
    #: latency strategy reads it, halve every this many seconds without a sample.
    latency_half_life_s: float = 10.0
    #: The engine's own view, scraped from its /metrics when it publishes vLLM's metrics
    #: (all gateways' requests, not just this one's); zero when unknown.
    engine_running: float = 0.0
    engine_waiting: float = 0.0
    engine_kv_usage: float = 0.0
    #: The engine's KV cache in tokens (``vllm:cache_config_info``); zero when unknown.
    engine_kv_capacity_tokens: float = 0.0


@dataclass(eq=False, slots=True)
class Deployment:
    id: DeploymentId
    provider_name: str
    provider: Provider
    #: Name sent upstream as ``model``.
    upstream_model: str
    settings: DeploymentSettings
    #: Whether a stream cut mid-answer may be continued on this deployment.
    resumes_streams: bool
    stats: DeploymentStats = field(default_factory=DeploymentStats)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.settings.cost_per_1k_input
            + completion_tokens * self.settings.cost_per_1k_output
        ) / 1000.0


@dataclass(frozen=True, slots=True)
class EngineUsage:
    """What the engine reported of one attempt's prompt (``usage.prompt_tokens`` and
    ``usage.prompt_tokens_details.cached_tokens``), in its own tokens."""

    prompt_tokens: int
    cached_tokens: int

    @property
    def cached_share(self) -> float:
        """The share of the prompt the engine had cached."""
        return min(1.0, self.cached_tokens / self.prompt_tokens)


@dataclass(slots=True)
class RouteDecision:
    deployment: Deployment
    #: Why this deployment: goes to the response's ``kvgate.route`` object as is.
    explanation: dict[str, Any] = field(default_factory=dict)
