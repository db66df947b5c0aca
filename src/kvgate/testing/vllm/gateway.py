"""KVGate configuration for a fleet of real vLLM replicas.

Each replica becomes an ``openai_compatible`` provider and, in every logical model, a
deployment that carries what KV-aware routing needs to reproduce the engine's view: its block
size, tokenizer (the model directory), hash algorithm, image model id and vision tokens per
image, and KV-event endpoints. Several logical
models over the same replicas (one per routing strategy) let one gateway compare strategies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kvgate.testing.vllm.fleet import KV_EVENTS_TOPIC, ReplicaFleet


def deployment_id(index: int) -> str:
    return f"vllm{index}"


def gateway_config(
    fleet: ReplicaFleet,
    strategies: Mapping[str, str],
    *,
    exact_cache: bool = False,
    request_timeout_s: float = 120.0,
    routing: Mapping[str, Any] | None = None,
    model_routing: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A config dict: logical model -> routing strategy, each over every replica.

    ``routing`` is merged into the top-level ``routing``; ``model_routing[name]`` into that
    model's. The gateway's exact cache is off by default, so repeated prompts reach the
    engines (that is what is measured).
    """
    providers = {
        deployment_id(r.index): {"type": "openai_compatible", "api_base": r.api_base,
                                 "read_timeout_s": request_timeout_s}
        for r in fleet.replicas
    }
    deployments = []
    for replica in fleet.replicas:
        deployment: dict[str, Any] = {
            "provider": deployment_id(replica.index),
            "model": replica.served_model_name,
            "id": deployment_id(replica.index),
            "block_size": replica.options.block_size,
            "tokenizer": str(replica.model.tokenizer_path),
            "hash_algo": replica.options.hash_algo,
            # vLLM hashes an image with its --model argument: the directory path.
            "mm_model_id": replica.model_id,
        }
        if replica.model.spec.image_tokens:
            deployment["image_tokens"] = replica.model.spec.image_tokens
        if replica.kv_events_endpoint is not None:
            deployment["kv_events"] = {"endpoint": replica.kv_events_endpoint,
                                       "replay_endpoint": replica.kv_replay_endpoint,
                                       "topic": KV_EVENTS_TOPIC}
        deployments.append(deployment)
    models = []
    for name, strategy in strategies.items():
        model_settings = {"strategy": strategy, **(model_routing or {}).get(name, {})}
        models.append({"name": name, "routing": model_settings, "deployments": deployments})
    return {
        "server": {"request_timeout_s": request_timeout_s},
        "providers": providers,
        "routing": {"strategy": "round_robin", **(routing or {})},
        "cache": {"exact": {"enabled": exact_cache}},
        "models": models,
    }


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text (JSON is YAML; no ``${`` in it, so nothing expands)."""
    return json.dumps(config, indent=2) + "\n"
