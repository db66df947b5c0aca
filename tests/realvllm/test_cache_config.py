"""The simulator's ``vllm:cache_config_info`` against a real replica's: same names, same values
for what both know, at the same KV budget (one /metrics read per replica; no extra start-up)."""

from __future__ import annotations

import urllib.request

import pytest

from kvgate.bench.scenarios.realvllm_sim import kv_blocks
from kvgate.bench.simfit_probe import parse_info_labels
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.metrics import render_metrics
from kvgate.sim.profiles import get_profile
from tests.realvllm.conftest import KV_CACHE_TOKENS, Fleet

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]


def test_sim_publishes_the_real_replicas_cache_config(fleet: Fleet) -> None:
    fleet.ensure_alive()
    profile = get_profile("cpu-tiny-llava")
    blocks = kv_blocks(KV_CACHE_TOKENS, profile)
    simulated = parse_info_labels(render_metrics(
        Engine(profile, EngineConfig(num_gpu_blocks=blocks)), "tiny-llava").decode())
    for replica in fleet.replicas:
        with urllib.request.urlopen(replica.url + "/metrics", timeout=10) as response:
            real = parse_info_labels(response.read().decode())
        assert set(simulated) <= set(real)
        for label in ("block_size", "num_gpu_blocks", "kv_cache_size_tokens", "cache_dtype",
                      "enable_prefix_caching", "prefix_caching_hash_algo", "engine"):
            assert simulated[label] == real[label], label
        assert int(real["num_gpu_blocks"]) == blocks
