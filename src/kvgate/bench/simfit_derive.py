"""From timing points measured on a real replica to the simulator's cost-model constants.

The simulator's step cost (:mod:`kvgate.sim.cost_model`), with ``weight_read_s`` = 0 (a tiny
model's weights are a few MB: no step is bound by reading them), is

    prefill of n new tokens alone:  overhead + n x compute + n(n+1)/2 x attn + per_seq
    decode of B sequences at context c:  overhead + B x (compute + per_seq + (c+1) x kv_read)

so each constant comes from one fit of the measured points (``simfit`` records them):

- ``compute_s_per_token``, ``attn_s_per_token_pair``: the engine's prefill time of cold text
  prompts (``vllm:request_prefill_time_seconds``) against [1, n, n(n+1)/2]; a negative term
  is not physical, and is dropped from the fit (its constant 0);
- ``step_overhead_s``: the intercept of the mean inter-token gap against the batch size
  (``vllm:inter_token_latency_seconds``, B sequences decoding together);
- ``kv_read_s_per_token``: the slope of the batch-1 gap against the context length;
- ``per_seq_overhead_s``: the batch slope minus compute and the KV read at that context;
- ``frontend_s``: the client's TTFT minus the engine's queue and prefill time of cold text
  prompts sent alone (median; the API server's HTTP, templating, tokenizing, first chunk);
- ``vision_encoder_s_per_token``: a cold image prompt's prefill time minus what the prefill
  fit predicts for its length, per vision token;
- ``image_preprocess_s_per_token``: a cold image prompt's front-end time minus the text
  front-end fit at its length, per vision token.

What the formula cannot express is reported next to the constants (``model_check``): the
prefill fit's intercept against overhead + per_seq, and the front end's growth per prompt token.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kvgate.bench.fit import FitError, LinearFit, fit_line, least_squares, spread

#: The profile constants this module derives, in the order reports list them.
CONSTANTS = ("step_overhead_s", "compute_s_per_token", "attn_s_per_token_pair",
             "kv_read_s_per_token", "per_seq_overhead_s", "frontend_s",
             "vision_encoder_s_per_token", "image_preprocess_s_per_token")

Point = Mapping[str, Any]
#: Prompt lengths at which each round's prefill fit is evaluated, for the spread of what the
#: fit predicts (the realvllm cases' prompts are ~615 and ~1,254 tokens).
PREDICT_AT_TOKENS = (512, 1024, 2048)


def _of(points: Iterable[Point], kind: str) -> list[Point]:
    return [p for p in points if p["kind"] == kind]


def medians(points: Sequence[Point]) -> list[dict[str, Any]]:
    """One point per probe (kind, batch, prompt tokens): the median of each numeric figure
    over its repeats, so one stalled request (another process took the core) does not pull a
    fit the way a mean would."""
    groups: dict[tuple[Any, ...], list[Point]] = {}
    for point in points:
        groups.setdefault((point["kind"], point["batch"], point["prompt_tokens"]), []
                          ).append(point)
    out = []
    for group in groups.values():
        merged: dict[str, Any] = dict(group[0])
        for key, value in group[0].items():
            if isinstance(value, float):
                values = [p[key] for p in group if isinstance(p.get(key), float)]
                merged[key] = statistics.median(values)
        merged["repeats"] = len(group)
        out.append(merged)
    return out


def fit_prefill(points: Sequence[Point]) -> tuple[LinearFit, bool]:
    """Engine prefill seconds against [1, n, n(n+1)/2] over cold prompts; (fit, quadratic).

    Neither term may be negative (a cost per token or per pair is not): a negative quadratic
    term falls back to [1, n] (quadratic False), a negative linear one to [1, n(n+1)/2]."""
    ns = [float(p["new_tokens"]) for p in points]
    ys = [float(p["prefill_s"]) for p in points]
    quadratic = least_squares([[1.0, n, n * (n + 1) / 2] for n in ns], ys)
    _, per_token, per_pair = quadratic.coefficients
    if per_pair < 0:
        linear = fit_line(ns, ys)
        return _padded(linear, (*linear.coefficients, 0.0)), False
    if per_token < 0:
        pairs = least_squares([[1.0, n * (n + 1) / 2] for n in ns], ys)
        return _padded(pairs, (pairs.coefficients[0], 0.0, pairs.coefficients[1])), True
    return quadratic, True


def _padded(fit: LinearFit, coefficients: tuple[float, ...]) -> LinearFit:
    return LinearFit(coefficients, fit.residual_rms, fit.r_squared, fit.num_points)


def derive_round(points: Sequence[Point], image_tokens: int) -> dict[str, Any]:
    """The constants from one round of points (see the module docstring), fitted on each
    probe's median; raises FitError when a kind of point needed for a fit is missing."""
    points = medians(points)
    prefill_points = _of(points, "prefill")
    prefill, quadratic = fit_prefill(prefill_points)
    _, compute, attn = prefill.coefficients
    batch_points = _of(points, "decode_batch")
    batch = fit_line([p["batch"] for p in batch_points], [p["server_itl_s"] for p in batch_points])
    context_points = _of(points, "decode_context")
    context = fit_line([p["mean_context_tokens"] for p in context_points],
                       [p["server_itl_s"] for p in context_points])
    overhead, batch_slope = batch.coefficients
    kv_read = max(0.0, context.coefficients[1])
    batch_context = statistics.fmean(p["mean_context_tokens"] for p in batch_points)
    per_seq = batch_slope - compute - (batch_context + 1) * kv_read
    frontend = fit_line([p["prompt_tokens"] for p in prefill_points],
                        [p["frontend_s"] for p in prefill_points])
    constants: dict[str, float] = {
        "step_overhead_s": overhead,
        "compute_s_per_token": compute,
        "attn_s_per_token_pair": attn,
        "kv_read_s_per_token": kv_read,
        "per_seq_overhead_s": max(0.0, per_seq),
        "frontend_s": statistics.median(p["frontend_s"] for p in prefill_points),
        "vision_encoder_s_per_token": 0.0,
        "image_preprocess_s_per_token": 0.0,
    }
    checks: dict[str, Any] = {
        # Compute and attention trade off against each other in the fit (n and n^2 are far
        # from independent over 0-2k tokens); the predictions they make together are steadier.
        "prefill_s_at_tokens": {str(n): prefill.predict(_prefill_row(n))
                                for n in PREDICT_AT_TOKENS},
        "prefill_quadratic": quadratic,
        "prefill_intercept_s": prefill.coefficients[0],
        # What the formula charges a prefill step besides its tokens; the measured intercept
        # minus this is fixed prefill cost the simulator does not model.
        "modelled_prefill_intercept_s": overhead + max(0.0, per_seq),
        "per_seq_before_clamp_s": per_seq,
        "frontend_s_per_prompt_token": frontend.coefficients[1],
        "decode_batch_context_tokens": round(batch_context, 1),
    }
    images = _of(points, "image_cold")
    if images and image_tokens:
        encoder = [p["prefill_s"] - prefill.predict(_prefill_row(p["new_tokens"]))
                   for p in images]
        preprocess = [p["frontend_s"] - frontend.predict([1.0, p["prompt_tokens"]])
                      for p in images]
        constants["vision_encoder_s_per_token"] = max(0.0, statistics.median(encoder)
                                                      / image_tokens)
        constants["image_preprocess_s_per_token"] = max(0.0, statistics.median(preprocess)
                                                        / image_tokens)
        warm = _of(points, "image_warm")
        if warm:
            checks["image_warm_frontend_extra_s"] = statistics.median(
                p["frontend_s"] - frontend.predict([1.0, p["prompt_tokens"]]) for p in warm)
            checks["image_cold_frontend_extra_s"] = statistics.median(preprocess)
    return {
        "constants": constants,
        "fits": {
            "prefill": prefill.to_json(("fixed_s", "s_per_token", "s_per_token_pair")),
            "decode_batch": batch.to_json(("itl_at_batch_0_s", "s_per_sequence")),
            "decode_context": context.to_json(("itl_at_context_0_s", "s_per_context_token")),
            "frontend": frontend.to_json(("fixed_s", "s_per_prompt_token")),
        },
        "model_check": checks,
    }


def _prefill_row(n: float) -> list[float]:
    return [1.0, float(n), n * (n + 1) / 2]


def derive(points: Sequence[Point], image_tokens: int) -> dict[str, Any]:
    """The constants a profile takes, from every round's points at once (each probe's median
    over all its repeats), and each round's own fit, whose spread is their uncertainty.

    Pooled rather than a median of per-round constants: compute and attention trade off in
    each fit, and the medians of the two taken from different rounds need not fit together."""
    rounds = sorted({int(p["round"]) for p in points})
    if not rounds:
        raise FitError("no points")
    pooled = derive_round(points, image_tokens)
    per_round = [derive_round([p for p in points if p["round"] == r], image_tokens)
                 for r in rounds]
    spreads = {name: spread([r["constants"][name] for r in per_round]) for name in CONSTANTS}
    predicted = {str(n): spread([r["model_check"]["prefill_s_at_tokens"][str(n)]
                                 for r in per_round]) for n in PREDICT_AT_TOKENS}
    return {
        "pooled": pooled,
        "rounds": per_round,
        "spread": spreads,
        "prefill_s_at_tokens_spread": predicted,
        "profile_constants": {name: _significant(pooled["constants"][name])
                              for name in CONSTANTS},
    }


def _significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: what a profile writes down."""
    return float(f"{value:.{digits}g}")
