"""Per-attempt bookkeeping shared by blocking and streamed dispatch: bodies, usage, latency."""

from __future__ import annotations

import math
import time

from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.core.provider import JSONObject
from kvgate.observability.metrics import Metrics

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
    metrics: Metrics, call: Call, model: str, deployment: Deployment, usage: object
) -> float:
    """Count tokens and spend for a finished attempt (also on the call, for the tenant's
    limits); return its cost in USD."""
    if not isinstance(usage, dict):
        return 0.0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    cost = deployment.cost_usd(prompt, completion)
    deployment.stats.cost_usd_total += cost
    call.billed_tokens += prompt + completion
    call.billed_usd += cost
    tokens = metrics.tokens_for
    tokens(model, deployment.id, "prompt").inc(prompt)
    tokens(model, deployment.id, "completion").inc(completion)
    if cached:
        tokens(model, deployment.id, "cached").inc(cached)
    if cost:
        metrics.cost_usd_for(model, deployment.id).inc(cost)
    return cost


def engine_usage(usage: object) -> EngineUsage | None:
    """The prompt's tokens and cached tokens from an OpenAI usage object; None when the engine
    did not report cached tokens (vLLM reports them with ``--enable-prompt-tokens-details``)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    prompt = usage.get("prompt_tokens")
    if (not isinstance(details, dict) or not isinstance(prompt, int)
            or isinstance(prompt, bool) or prompt <= 0):
        return None
    cached = details.get("cached_tokens")
    if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
        return None
    return EngineUsage(prompt, cached)


def update_latency(
    deployment: Deployment, *, ttft_s: float | None, ms_per_token: float | None
) -> None:
    stats = deployment.stats
    now_s = time.monotonic()
    if ttft_s is not None:
        stats.ewma_ttft_ms = _blend(
            stats.ewma_ttft_ms, stats.ttft_sampled_monotonic_s, ttft_s * 1000, now_s,
            stats.latency_half_life_s,
        )
        stats.ttft_sampled_monotonic_s = now_s
    if ms_per_token is not None:
        stats.ewma_ms_per_token = _blend(
            stats.ewma_ms_per_token, stats.per_token_sampled_monotonic_s, ms_per_token, now_s,
            stats.latency_half_life_s,
        )
        stats.per_token_sampled_monotonic_s = now_s


def _blend(
    average: float | None, sampled_s: float, sample: float, now_s: float, half_life_s: float
) -> float:
    """Fold ``sample`` into ``average``; an old average counts for less the older it is.

    Under steady traffic this is a plain EWMA (the old value keeps ``1 - alpha``). After a
    quiet spell, typically a deployment the latency strategy avoided for being slow, the old
    value's weight halves every half-life, so one fresh sample from a deployment that has
    recovered nearly replaces the figure that kept it out of rotation.
    """
    if average is None:
        return sample
    keep = (1.0 - _EWMA_ALPHA) * math.exp2(-(now_s - sampled_s) / half_life_s)
    return sample + keep * (average - sample)
