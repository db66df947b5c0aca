"""The simfit fit: least squares, the mapping from measured points to cost-model constants (on
points generated from known constants), the /metrics readers, and the fitted profiles against
the committed measurement. (`kvgate bench scenario simfit` measures real vLLM.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench.fit import FitError, fit_line, least_squares, spread
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.simfit_derive import CONSTANTS, derive, derive_round, fit_prefill, medians
from kvgate.bench.simfit_probe import parse_info_labels, parse_timers
from kvgate.sim.profiles import get_profile

RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "simfit.json"
PROFILE_OF_KIND = {"text": "cpu-tiny-llama", "vision": "cpu-tiny-llava"}


def test_registered() -> None:
    assert SCENARIOS["simfit"].module == "kvgate.bench.scenarios.simfit"


def test_least_squares_recovers_a_quadratic_exactly() -> None:
    ns = [32.0, 500.0, 1000.0, 1500.0, 2000.0]
    ys = [0.004 + 2e-5 * n + 3e-8 * n * n for n in ns]
    fit = least_squares([[1.0, n, n * n] for n in ns], ys)
    assert fit.coefficients == pytest.approx((0.004, 2e-5, 3e-8), rel=1e-6)
    assert fit.r_squared == pytest.approx(1.0) and fit.residual_rms < 1e-12
    assert fit.predict([1.0, 700.0, 490_000.0]) == pytest.approx(0.004 + 0.014 + 0.0147)


def test_fit_line_minimises_squared_error_on_noisy_points() -> None:
    fit = fit_line([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])
    # By hand: slope = sum(dx dy) / sum(dx^2) = 4 / 5, intercept = mean y - slope x mean x.
    assert fit.coefficients == pytest.approx((0.5, 0.8))
    assert 0 < fit.r_squared < 1


def test_underdetermined_and_singular_designs_are_refused() -> None:
    with pytest.raises(FitError, match="cannot determine"):
        fit_line([1.0], [2.0])
    with pytest.raises(FitError, match="singular"):
        fit_line([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])


def test_spread() -> None:
    s = spread([1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["relative_spread"]) == (2.0, 1.0, 3.0, 1.0)
    assert spread([0.0, 0.0, 0.0])["relative_spread"] == 0.0
    assert math.isinf(spread([0.0, 0.0, 1.0])["relative_spread"])


def test_a_negative_per_token_term_is_dropped() -> None:
    points = [{"new_tokens": n, "prefill_s": 0.005 + 4e-8 * n * (n + 1) / 2 - 1e-5 * n}
              for n in (100, 600, 1100, 1600, 2000)]
    fit, quadratic = fit_prefill(points)
    assert quadratic and fit.coefficients[1] == 0.0 and fit.coefficients[2] > 0


def test_a_negative_attention_term_falls_back_to_a_line() -> None:
    points = [{"new_tokens": n, "prefill_s": 0.005 + 3e-5 * n - 2e-9 * n * n}
              for n in (100, 600, 1100, 1600, 2000)]
    fit, quadratic = fit_prefill(points)
    assert not quadratic and fit.coefficients[2] == 0.0
    assert fit.coefficients[1] > 0


TRUE = {"step_overhead_s": 0.004, "compute_s_per_token": 2e-5, "attn_s_per_token_pair": 1.5e-8,
        "kv_read_s_per_token": 2e-7, "per_seq_overhead_s": 3e-4, "frontend_s": 0.009,
        "vision_encoder_s_per_token": 1e-5, "image_preprocess_s_per_token": 1.7e-5}
IMAGE_TOKENS = 576


def synthetic_points(c: dict[str, float], round_index: int = 0, repeat: int = 0,
                     stall_s: float = 0.0) -> list[dict[str, Any]]:
    """What a replica obeying the simulator's step formula (with ``c``) would measure;
    ``stall_s`` is added to one prefill probe, as when another process takes the core."""
    def prefill_s(n: int) -> float:
        return (c["step_overhead_s"] + n * c["compute_s_per_token"]
                + n * (n + 1) / 2 * c["attn_s_per_token_pair"] + c["per_seq_overhead_s"])

    def itl_s(batch: int, context: float) -> float:
        return c["step_overhead_s"] + batch * (c["compute_s_per_token"] + c["per_seq_overhead_s"]
                                               + (context + 1) * c["kv_read_s_per_token"])

    base = {"round": round_index, "repeat": repeat, "cached_tokens": 0}
    points: list[dict[str, Any]] = []
    for i, n in enumerate((46, 270, 526, 1038, 1550, 2014)):
        points.append({**base, "kind": "prefill", "batch": 1, "prompt_tokens": n,
                       "new_tokens": n, "prefill_s": prefill_s(n) + (stall_s if i == 2 else 0.0),
                       "frontend_s": c["frontend_s"]})
    for batch in (1, 2, 4, 8):
        points.append({**base, "kind": "decode_batch", "batch": batch, "prompt_tokens": 78,
                       "mean_context_tokens": 110.0, "server_itl_s": itl_s(batch, 110.0)})
    for n in (78, 1038, 2014, 4014):
        points.append({**base, "kind": "decode_context", "batch": 1, "prompt_tokens": n,
                       "mean_context_tokens": n + 32.0, "server_itl_s": itl_s(1, n + 32.0)})
    image_prompt = IMAGE_TOKENS + 39
    points.append({**base, "kind": "image_cold", "batch": 1, "prompt_tokens": image_prompt,
                   "new_tokens": image_prompt,
                   "prefill_s": prefill_s(image_prompt)
                   + IMAGE_TOKENS * c["vision_encoder_s_per_token"],
                   "frontend_s": c["frontend_s"]
                   + IMAGE_TOKENS * c["image_preprocess_s_per_token"]})
    return points


def test_derive_round_recovers_the_constants_that_made_the_points() -> None:
    derived = derive_round(synthetic_points(TRUE), IMAGE_TOKENS)
    for name in CONSTANTS:
        assert derived["constants"][name] == pytest.approx(TRUE[name], rel=1e-4, abs=1e-12), name
    check = derived["model_check"]
    assert check["prefill_quadratic"]
    # The formula's own prefill intercept is overhead + per_seq: nothing left unmodelled.
    assert check["prefill_intercept_s"] == pytest.approx(check["modelled_prefill_intercept_s"])


def test_a_stalled_repeat_does_not_move_the_fit() -> None:
    points = (synthetic_points(TRUE, repeat=0) + synthetic_points(TRUE, repeat=1, stall_s=0.05)
              + synthetic_points(TRUE, repeat=2))
    assert len(medians(points)) == len(synthetic_points(TRUE))
    derived = derive_round(points, IMAGE_TOKENS)["constants"]
    assert derived["compute_s_per_token"] == pytest.approx(TRUE["compute_s_per_token"],
                                                           rel=1e-4)


def test_derive_pools_the_rounds_and_reports_their_spread() -> None:
    slower = {**TRUE, "step_overhead_s": 0.005, "compute_s_per_token": 3e-5}
    faster = {**TRUE, "step_overhead_s": 0.003, "compute_s_per_token": 1e-5}
    points = (synthetic_points(TRUE, 0) + synthetic_points(slower, 1)
              + synthetic_points(faster, 2))
    result = derive(points, IMAGE_TOKENS)
    overhead = result["spread"]["step_overhead_s"]
    assert overhead["median"] == pytest.approx(0.004) and overhead["n"] == 3
    assert overhead["relative_spread"] == pytest.approx(0.5)
    assert result["spread"]["compute_s_per_token"]["min"] == pytest.approx(1e-5)
    # Every probe's median over the rounds is the middle round's value: the pooled fit.
    for name in CONSTANTS:
        assert result["pooled"]["constants"][name] == pytest.approx(TRUE[name], rel=1e-4), name
    assert result["profile_constants"]["step_overhead_s"] == 0.004
    assert result["profile_constants"]["attn_s_per_token_pair"] == 1.5e-8
    assert len(result["rounds"]) == 3
    assert set(result["prefill_s_at_tokens_spread"]) == {"512", "1024", "2048"}
    with pytest.raises(FitError):
        derive([], IMAGE_TOKENS)


def test_text_only_points_leave_the_vision_constants_at_zero() -> None:
    points = [p for p in synthetic_points(TRUE) if p["kind"] != "image_cold"]
    constants = derive_round(points, 0)["constants"]
    assert constants["vision_encoder_s_per_token"] == 0.0
    assert constants["image_preprocess_s_per_token"] == 0.0


# A real vLLM 0.32 /metrics excerpt (two label sets of one histogram are summed).
METRICS = """\
# TYPE vllm:request_prefill_time_seconds histogram
vllm:request_prefill_time_seconds_sum{engine="0",model_name="tiny-llava"} 0.25
vllm:request_prefill_time_seconds_sum{engine="1",model_name="tiny-llava"} 0.5
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny-llava"} 3.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="tiny-llava"} 0.09
vllm:inter_token_latency_seconds_count{engine="0",model_name="tiny-llava"} 30.0
vllm:cache_config_info{block_size="32",cache_dtype="auto",engine="0",kv_cache_layout="None",\
num_gpu_blocks="161",prefix_caching_hash_algo="sha256"} 1.0
"""


def test_metrics_readers() -> None:
    timers = parse_timers(METRICS)
    assert timers.prefill_s == 0.75 and timers.requests == 3.0
    assert timers.mean_itl_s == pytest.approx(0.003)
    assert timers.minus(timers).prefill_s == 0.0 and timers.minus(timers).mean_itl_s is None
    labels = parse_info_labels(METRICS)
    assert labels["num_gpu_blocks"] == "161" and labels["block_size"] == "32"
    assert labels["kv_cache_layout"] == "None" and labels["engine"] == "0"
    assert parse_info_labels("") == {}


def _result() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(RESULT.read_text())
    return document


@pytest.mark.parametrize("kind", sorted(PROFILE_OF_KIND))
def test_fitted_profiles_are_the_committed_measurement(kind: str) -> None:
    """Each cpu-tiny-* constant is the measured median in benchmarks/results/simfit.json:
    rerunning simfit without updating the profiles (or the reverse) fails here."""
    document = _result()
    assert not document["quick"]
    measured = document["models"][kind]
    profile = get_profile(PROFILE_OF_KIND[kind])
    for name, value in measured["profile_constants"].items():
        assert getattr(profile, name) == pytest.approx(value, rel=1e-9), name
    cache = measured["cache_config"]
    assert profile.num_gpu_blocks == int(cache["num_gpu_blocks"])
    assert profile.block_size == int(cache["block_size"])
    assert profile.kv_bytes_per_token == (int(cache["kv_cache_memory_bytes"])
                                          // int(cache["kv_cache_size_tokens"]))
    assert profile.max_model_len == measured["replica_options"]["max_model_len"]
    assert profile.served_model_name == measured["model"]["name"]
    assert profile.prompt_format.default_image_tokens == measured["model"]["image_tokens"]
    assert profile.weight_read_s == 0.0
