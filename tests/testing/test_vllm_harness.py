"""The real-vLLM harness's own logic, without vLLM: KV sizing, cache keys, venv markers, the
gateway config it writes. (tests/realvllm runs the real thing.)"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest

from kvgate.config.loader import parse_settings
from kvgate.testing.vllm import (
    TINY_LLAMA,
    TINY_LLAVA,
    BuiltModel,
    ReplicaFleet,
    ReplicaOptions,
    VllmReplica,
    dump_config,
    gateway_config,
)
from kvgate.testing.vllm.venv import MARKER_NAME, VllmVenv, expected_marker, find_venv

VENV = VllmVenv(Path("/nonexistent"), {"installed": {"torch": "2.13.0+cpu",
                                                      "transformers": "5.19.0",
                                                      "tokenizers": "0.23.3"}})


def test_kv_bytes_match_what_vllm_allocated() -> None:
    # tiny-llama: 4 layers x 2 KV heads x 64 dims x K and V x 2 bytes (bf16) per token.
    assert TINY_LLAMA.kv_bytes_per_token == 2048
    model = BuiltModel(TINY_LLAMA, Path("/m"), {})
    # Measured: --kv-cache-memory-bytes 16M gave 8,160 usable tokens (255 blocks of 32 + the
    # null block).
    assert ReplicaOptions(kv_cache_tokens=8160).kv_cache_bytes(model) == 16 * 2**20
    assert ReplicaOptions(kv_cache_tokens=4096).model_len(model) == 4096
    assert ReplicaOptions(kv_cache_tokens=65536).model_len(model) == 8192


def test_image_is_most_of_a_vision_prompt() -> None:
    assert TINY_LLAVA.image_tokens == 576
    assert TINY_LLAMA.image_tokens == 0
    with pytest.raises(ValueError):
        type(TINY_LLAMA)(name="x", kind="vision")


def test_model_key_follows_parameters_and_library_versions() -> None:
    key = TINY_LLAVA.key(VENV)
    assert key == TINY_LLAVA.key(VENV)
    assert TINY_LLAVA.key(VllmVenv(VENV.path, {"installed": {"transformers": "5.20.0"}})) != key
    assert dataclasses.replace(TINY_LLAVA, seed=1).key(VENV) != key


def test_corpus_is_deterministic() -> None:
    assert TINY_LLAMA.corpus() == TINY_LLAMA.corpus()
    assert len(TINY_LLAMA.corpus()) > TINY_LLAMA.corpus_lines


def test_a_venv_is_reused_only_when_its_marker_matches(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    assert find_venv(tmp_path) is None
    (tmp_path / MARKER_NAME).write_text(json.dumps(expected_marker()))
    assert find_venv(tmp_path) is not None
    (tmp_path / MARKER_NAME).write_text(json.dumps({**expected_marker(), "fix_level": -1}))
    assert find_venv(tmp_path) is None


def test_gateway_config_validates_and_carries_what_precise_routing_needs(tmp_path: Path,
                                                                        ) -> None:
    model = BuiltModel(TINY_LLAVA, tmp_path / "tiny-llava-abc", {})
    fleet = ReplicaFleet(VENV, model, count=2, options=ReplicaOptions(kv_cache_tokens=4096))
    fleet.replicas = [
        VllmReplica(index=i, port=9000 + i, model=model, options=fleet.options, args=[],
                    env={}, log_path=tmp_path / f"r{i}.log", kv_events_port=9100 + i,
                    kv_replay_port=9200 + i)
        for i in range(2)
    ]
    config = gateway_config(fleet, {"kv": "prefix_kv_aware", "precise": "precise_kv"})
    settings = parse_settings(dump_config(config))
    assert [m.name for m in settings.models] == ["kv", "precise"]
    deployment = settings.models[1].deployments[1]
    assert deployment.id == "vllm1" and deployment.model == "tiny-llava"
    assert deployment.block_size == 32 and deployment.hash_algo == "sha256"
    assert deployment.tokenizer == str(model.path)
    assert deployment.mm_model_id == str(model.path)  # vLLM hashes images with --model
    assert deployment.image_tokens == 576
    assert deployment.kv_events is not None
    assert deployment.kv_events.endpoint == "tcp://127.0.0.1:9101"
    assert deployment.kv_events.replay_endpoint == "tcp://127.0.0.1:9201"
    assert settings.cache.exact.enabled is False


@pytest.mark.parametrize(("cpu_bind", "pinned"), [("per_replica", True),
                                                  ("per_replica_threads", False)])
def test_each_replica_gets_a_core_of_its_own(tmp_path: Path, cpu_bind: str,
                                             pinned: bool) -> None:
    model = BuiltModel(TINY_LLAVA, tmp_path / "tiny-llava-abc", {})
    options = ReplicaOptions(cpu_bind=cpu_bind)  # type: ignore[arg-type]
    fleet = ReplicaFleet(VENV, model, count=2, options=options)
    # The cores this process may use, not 0..N-1: a cpuset can allow, say, 2 and 5 only.
    replicas = [fleet._make(index, tmp_path, cores=[2, 5]) for index in range(3)]
    # The worker's OpenMP threads are bound either way; the processes only by per_replica.
    assert [r.env["VLLM_CPU_OMP_THREADS_BIND"] for r in replicas] == ["2", "5", "2"]
    expected = [frozenset({2}), frozenset({5}), frozenset({2})] if pinned else [None] * 3
    assert [r.cores for r in replicas] == expected


def test_a_pinned_replicas_children_inherit_its_core(tmp_path: Path) -> None:
    """What vLLM's engine core and worker get: the affinity set at spawn, by inheritance."""
    core = max(os.sched_getaffinity(0))
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
            "'import time; time.sleep(30)']); time.sleep(30)"
    replica = VllmReplica(index=0, port=1, model=BuiltModel(TINY_LLAVA, tmp_path, {}),
                          options=ReplicaOptions(), args=[sys.executable, "-c", child],
                          env=dict(os.environ), log_path=tmp_path / "r.log",
                          cores=frozenset({core}))
    replica.spawn()
    try:
        deadline = time.monotonic() + 10
        while len(replica.affinities()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert replica.affinities() == [frozenset({core})] * 2
    finally:
        replica.stop(timeout_s=5)
    assert replica.affinities() == []  # stopped: nothing left to read
