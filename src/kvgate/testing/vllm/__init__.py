"""Real vLLM (its CPU build) in the loop: a venv, tiny local models, replicas on loopback.

    python -m kvgate.testing.vllm setup              # venv + both models, cached (first: minutes)
    python -m kvgate.testing.vllm serve --model vision -n 2 --kv-tokens 4096 --config gw.yaml
    kvgate run -c gw.yaml                            # the gateway in front of them

From Python (tests, benchmark scenarios)::

    env = prepare()                                   # VllmVenv + built models, timed
    with ReplicaFleet(env.venv, env.models["vision"], count=2,
                      options=ReplicaOptions(kv_cache_tokens=4096)) as fleet:
        config = gateway_config(fleet, {"kv": "prefix_kv_aware", "rr": "round_robin"})

Nothing here imports vLLM or torch: the venv's interpreter does that, in subprocesses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kvgate.testing.vllm.fleet import ReplicaFleet, running_fleet
from kvgate.testing.vllm.gateway import deployment_id, dump_config, gateway_config
from kvgate.testing.vllm.models import (
    MODELS,
    TINY_LLAMA,
    TINY_LLAVA,
    BuiltModel,
    ModelBuildError,
    ModelSpec,
    ensure_model,
)
from kvgate.testing.vllm.replicas import ReplicaOptions, ReplicaStartError, VllmReplica
from kvgate.testing.vllm.venv import Log, VenvError, VllmVenv, ensure_venv, find_venv


@dataclass(frozen=True, slots=True)
class VllmEnvironment:
    """A ready venv and built models, with how long getting them took (seconds)."""

    venv: VllmVenv
    models: dict[str, BuiltModel]
    timings_s: dict[str, float] = field(default_factory=dict)


def prepare(kinds: tuple[str, ...] = ("text", "vision"), *, venv_path: Path | None = None,
            log: Log | None = None) -> VllmEnvironment:
    """Ensure the venv and the models of ``kinds`` ("text", "vision"); cached after the first.

    Raises :class:`VenvError` or :class:`ModelBuildError` with the reason when vLLM's CPU build
    cannot be installed or run here: callers (CI) must fail on it, not skip.
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    venv = ensure_venv(venv_path, log=log)
    timings["venv"] = round(time.monotonic() - started, 2)
    models = {}
    for kind in kinds:
        started = time.monotonic()
        models[kind] = ensure_model(MODELS[kind], venv)
        timings[f"model_{kind}"] = round(time.monotonic() - started, 2)
    return VllmEnvironment(venv, models, timings)


__all__ = [
    "MODELS",
    "TINY_LLAMA",
    "TINY_LLAVA",
    "BuiltModel",
    "ModelBuildError",
    "ModelSpec",
    "ReplicaFleet",
    "ReplicaOptions",
    "ReplicaStartError",
    "VenvError",
    "VllmEnvironment",
    "VllmReplica",
    "VllmVenv",
    "deployment_id",
    "dump_config",
    "ensure_model",
    "ensure_venv",
    "find_venv",
    "gateway_config",
    "prepare",
    "running_fleet",
]
