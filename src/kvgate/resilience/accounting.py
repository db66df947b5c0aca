"""Per-attempt bookkeeping shared by blocking and streamed dispatch: bodies, usage, latency."""

from __future__ import annotations

import time

from kvgate.gateway.call import Call
from kvgate.observability.metrics import Metrics
from kvgate.providers.base import JSONObject
from kvgate.routing.deployment import Deployment

#: Weight of the newest sample in the latency moving averages.
_EWMA_ALPHA = 0.2


def upstream_body(call: Call, deployment: Deployment) -> JSONObject:
    """The body for one attempt: the client's, with the upstream model and usage always on."""
    body = {**call.body, "model": deployment.upstream_model}
    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = (
            {**options, "include_usage": True} if isinstance(options, dict)
            else {"include_usage": True}
        )
    return body


def record_usage(
    metrics: Metrics, model: str, deployment: Deployment, usage: object
) -> float:
    """Count tokens and spend for a finished attempt; return its cost in USD."""
    if not isinstance(usage, dict):
        return 0.0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    cost = deployment.cost_usd(prompt, completion)
    deployment.stats.cost_usd_total += cost
    tokens = metrics.tokens
    tokens.labels(model, deployment.id, "prompt").inc(prompt)
    tokens.labels(model, deployment.id, "completion").inc(completion)
    if cached:
        tokens.labels(model, deployment.id, "cached").inc(cached)
    if cost:
        metrics.cost_usd.labels(model, deployment.id).inc(cost)
    return cost


def update_latency(
    deployment: Deployment, *, ttft_s: float | None, ms_per_token: float | None
) -> None:
    stats = deployment.stats
    if ttft_s is not None:
        sample = ttft_s * 1000
        stats.ewma_ttft_ms = sample if stats.ewma_ttft_ms is None else (
            stats.ewma_ttft_ms + _EWMA_ALPHA * (sample - stats.ewma_ttft_ms)
        )
    if ms_per_token is not None:
        stats.ewma_ms_per_token = ms_per_token if stats.ewma_ms_per_token is None else (
            stats.ewma_ms_per_token + _EWMA_ALPHA * (ms_per_token - stats.ewma_ms_per_token)
        )
    stats.last_sample_monotonic_s = time.monotonic()
