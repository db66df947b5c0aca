"""The realvllm workload on the fitted simulator: the comparison's arithmetic, the deployments
it gives the gateway's strategies, and a quick simulated run of both cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.bench.scenarios.realvllm_cases import cases, requests_for
from kvgate.bench.scenarios.realvllm_sim import (
    SIM_ARMS,
    SIM_PROFILES,
    compare,
    deployment_settings,
    fitted_sim_section,
    kv_blocks,
    ranking,
    replica_time_factors,
    run_sim_arm,
    run_sim_case,
    summarize,
)
from kvgate.config.schema import DeploymentSettings
from kvgate.sim.profiles import get_profile
from kvgate.testing.vllm import MODELS, ReplicaOptions
from kvgate.testing.vllm.models import BuiltModel


def test_compare_reports_differences_tolerance_and_ranking() -> None:
    real = {"round_robin": 0.50, "least_busy": 0.48, "prefix_kv_aware": 0.70,
            "precise_kv": 0.77, "vllm-router/cache_aware": 0.50}
    sim = {"round_robin": 0.49, "least_busy": 0.51, "prefix_kv_aware": 0.78,
           "precise_kv": 0.79}
    result = compare(real, sim)
    assert set(result["arms"]) == set(sim)  # the peer router has no simulated figure
    assert result["arms"]["prefix_kv_aware"]["difference"] == pytest.approx(0.08)
    assert not result["arms"]["prefix_kv_aware"]["within_tolerance"]
    assert result["arms"]["round_robin"]["within_tolerance"]
    assert not result["all_within_tolerance"]
    assert result["max_abs_difference"] == pytest.approx(0.08)
    assert result["real_ranking"] == ["precise_kv", "prefix_kv_aware", "round_robin",
                                      "least_busy"]
    assert not result["ranking_agrees"]
    (pair,) = result["pairs_disagreeing"]
    assert pair == {"arms": ["round_robin", "least_busy"], "real_gap": 0.02, "sim_gap": -0.02}
    # ... two arms 0.02 apart on both sides: equal within the tolerance.
    assert result["ranking_agrees_beyond_tolerance"]
    swapped = compare({"a": 0.3, "b": 0.5}, {"a": 0.5, "b": 0.3})
    assert not swapped["ranking_agrees"] and not swapped["ranking_agrees_beyond_tolerance"]
    tied = compare({"a": 0.78, "b": 0.77}, {"a": 0.79, "b": 0.79})
    assert tied["pairs_disagreeing"] and tied["ranking_agrees_beyond_tolerance"]
    agreeing = compare(real, {arm: real[arm] + 0.01 for arm in sim})
    assert agreeing["ranking_agrees"] and agreeing["all_within_tolerance"]
    assert agreeing["pairs_disagreeing"] == []
    assert compare({"round_robin": None}, {"round_robin": 0.5})["arms"] == {}


def test_ranking_is_by_hit_rate_descending() -> None:
    assert ranking({"a": 0.1, "b": 0.9, "c": 0.5}) == ["b", "c", "a"]


def test_kv_blocks_match_what_the_real_replicas_allocate() -> None:
    """The real replica reported num_gpu_blocks 161 for realvllm's 5,120 tokens; the harness
    asks vLLM for the same (ReplicaOptions.kv_cache_bytes), for either model."""
    for kind, profile_name in SIM_PROFILES.items():
        profile = get_profile(profile_name)
        budget = cases(quick=False)[0].kv_cache_tokens
        assert kv_blocks(budget, profile) == profile.num_gpu_blocks == 161
        model = BuiltModel(MODELS[kind], Path("/models") / kind, {})
        options = ReplicaOptions(kv_cache_tokens=budget)
        assert options.kv_cache_bytes(model) == (kv_blocks(budget, profile) * profile.block_size
                                                 * profile.kv_bytes_per_token)


def test_deployments_carry_what_the_real_gateway_config_does() -> None:
    profile = get_profile("cpu-tiny-llava")
    plain = deployment_settings(profile, "prefix_kv_aware", 2)
    precise = deployment_settings(profile, "precise_kv", 2)
    for settings in (*plain, *precise):
        parsed = DeploymentSettings(provider="p", model="tiny-llava", **settings)
        assert parsed.block_size == 32 and parsed.image_tokens == 576
        assert parsed.tokenizer == "kvgate-sim:cpu-tiny-llava"
        assert parsed.mm_model_id == "tiny-llava"
    assert all("kv_events" not in s for s in plain)
    assert [s["kv_events"].endpoint for s in precise] == ["inproc://replica-0",
                                                          "inproc://replica-1"]
    assert "image_tokens" not in deployment_settings(get_profile("cpu-tiny-llama"),
                                                     "round_robin", 1)[0]


@pytest.mark.parametrize("case", cases(quick=True), ids=lambda c: c.name)
def test_quick_cases_run_every_arm_on_the_fitted_sim(case: object) -> None:
    from kvgate.bench.scenarios.realvllm_cases import Case

    assert isinstance(case, Case)
    profile = get_profile(SIM_PROFILES[case.model])
    requests = requests_for(case, profile.served_model_name, seed=0)
    result = run_sim_case(requests, model_kind=case.model, kv_cache_tokens=case.kv_cache_tokens,
                          concurrency=case.concurrency, seeds=range(2))
    assert set(result["arms"]) == set(SIM_ARMS)
    for row in result["arms"].values():
        assert 0.0 <= row["hit_rate_min"] <= row["prefix_cache_hit_rate"] <= row["hit_rate_max"]
        for run in row["runs"]:
            assert run["errors"] == 0 and sum(run["requests_per_replica"]) == len(requests)
    arms = result["arms"]
    # Repeats of an image or document are the whole cacheable share: affinity keeps them.
    assert (arms["prefix_kv_aware"]["prefix_cache_hit_rate"]
            > arms["round_robin"]["prefix_cache_hit_rate"])


def test_simulated_prompts_are_as_long_as_the_real_ones() -> None:
    """Per request, the real replicas counted 615 (image + question) and 1,254 (document +
    question) prompt tokens in the realvllm run; the fitted profiles' prompts span the same
    KV blocks of 32 (the template's tokens differ by a few)."""
    real_tokens = {"multimodal": 615, "text": 1254}
    for case in cases(quick=True):
        profile = get_profile(SIM_PROFILES[case.model])
        run = run_sim_arm(requests_for(case, profile.served_model_name, 0),
                          strategy="round_robin", profile_name=profile.name,
                          kv_cache_tokens=case.kv_cache_tokens, concurrency=1, seed=0)
        per_request = run["prompt_tokens"] / case.num_requests
        assert per_request == pytest.approx(real_tokens[case.name], abs=10)
        output = case.workload.output_tokens
        assert ((per_request + output) // 32 == (real_tokens[case.name] + output) // 32)


def test_a_slower_replica_draws_less_load_aware_traffic() -> None:
    """The what-if behind the real runs' uneven splits: when one replica runs slower (its
    core shared with other work), load-aware arms send more to the other one."""
    case = cases(quick=False)[1]  # text
    profile = get_profile(SIM_PROFILES[case.model])
    requests = requests_for(case, profile.served_model_name, 0)
    even = run_sim_arm(requests, strategy="least_busy", profile_name=profile.name,
                       kv_cache_tokens=case.kv_cache_tokens, concurrency=case.concurrency,
                       seed=0)
    slowed = run_sim_arm(requests, strategy="least_busy", profile_name=profile.name,
                         kv_cache_tokens=case.kv_cache_tokens, concurrency=case.concurrency,
                         seed=0, time_factors=[1.0, 4.0])
    assert abs(even["requests_per_replica"][0] - even["requests_per_replica"][1]) <= 4
    fast, slow = slowed["requests_per_replica"]
    assert fast > 2 * slow
    assert slowed["simulated_s"] > even["simulated_s"]


def test_replica_time_factors_are_gaps_over_the_fastest() -> None:
    assert replica_time_factors([9.0, 3.0]) == [3.0, 1.0]
    assert replica_time_factors([4.0, 4.0]) == [1.0, 1.0]
    assert replica_time_factors([4.0, None]) is None
    assert replica_time_factors([]) is None


def _section(real: dict[str, float], sim: dict[str, float]) -> dict[str, object]:
    return {"arms": {arm: {"prefix_cache_hit_rate": rate} for arm, rate in sim.items()},
            "comparison": compare(real, sim)}


def test_summarize_compares_the_mean_of_the_real_runs() -> None:
    sim = {"round_robin": 0.50, "prefix_kv_aware": 0.80}
    runs = [{"text": _section({"round_robin": 0.48, "prefix_kv_aware": 0.60}, sim)},
            {"text": _section({"round_robin": 0.52, "prefix_kv_aware": 0.80}, sim)}]
    summary = summarize(runs)["text"]
    assert summary["real_runs"] == {"round_robin": [0.48, 0.52],
                                    "prefix_kv_aware": [0.60, 0.80]}
    mean = summary["mean_of_real_runs"]
    assert mean["arms"]["round_robin"]["difference"] == pytest.approx(0.0)
    assert mean["arms"]["prefix_kv_aware"]["difference"] == pytest.approx(0.1)
    assert not mean["all_within_tolerance"] and mean["ranking_agrees"]
    assert summary["runs_ranking_agrees"] == [True, True]
    assert summary["speed_matched_runs"]["round_robin"] == [None, None]


def test_the_section_adds_speed_matched_arms_from_the_real_gaps() -> None:
    case = cases(quick=False)[1]
    profile = get_profile(SIM_PROFILES[case.model])
    section = fitted_sim_section(
        requests_for(case, profile.served_model_name, 0), model_kind=case.model,
        kv_cache_tokens=case.kv_cache_tokens, concurrency=case.concurrency,
        real={"least_busy": 0.4, "round_robin": 0.35}, seeds=range(1),
        real_itl_ms={"least_busy": [16.0, 4.0], "round_robin": [None, 3.0]})
    assert section["comparison"]["arms"].keys() == {"least_busy", "round_robin"}
    matched = section["speed_matched"]
    assert matched["arms"].keys() == {"least_busy"}  # round robin's gaps are incomplete
    arm = matched["arms"]["least_busy"]
    assert arm["replica_time_factors"] == [4.0, 1.0]
    (slow, fast), = arm["requests_per_replica"]
    assert fast > slow
    assert matched["comparison"]["arms"]["least_busy"]["real"] == 0.4
