"""Settings of one simulated replica, parsed once and passed to its process as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from kvgate.sim.engine import EngineConfig
from kvgate.sim.kv_publisher import KVEventsConfig
from kvgate.sim.profiles import DEFAULT_PROFILE, Profile, get_profile
from kvgate.vllm_compat.hashing import HashAlgo, resolve_none_hash_seed
from kvgate.vllm_compat.kv_events import EventLayout

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """Everything a replica process needs; immutable after parsing."""

    index: int = 0
    host: str = "127.0.0.1"
    port: int = 8100
    profile: str = DEFAULT_PROFILE
    served_model_name: str | None = None
    kv_blocks: int | None = None
    cpu_offload_blocks: int = 0
    time_scale: float = 1.0
    hash_algo: HashAlgo = "sha256"
    # The PYTHONHASHSEED a vLLM replica would run with; None = unset (vLLM's seed rules apply).
    hash_seed: str | None = None
    kv_events_endpoint: str | None = None
    kv_events_replay_endpoint: str | None = None
    kv_events_topic: str = "kv-events"
    kv_events_layout: EventLayout = "map"
    image_tokens: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    frontend_workers: int = 1
    log_level: LogLevel = "warning"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def build_profile(self) -> Profile:
        """The named profile with this replica's overrides applied."""
        profile = get_profile(self.profile)
        overrides: dict[str, object] = {}
        if self.served_model_name:
            overrides["served_model_name"] = self.served_model_name
        if self.kv_blocks is not None:
            overrides["num_gpu_blocks"] = self.kv_blocks
        if self.max_num_seqs is not None:
            overrides["max_num_seqs"] = self.max_num_seqs
        if self.max_num_batched_tokens is not None:
            overrides["max_num_batched_tokens"] = self.max_num_batched_tokens
        return profile.with_overrides(**overrides) if overrides else profile

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            cpu_offload_blocks=self.cpu_offload_blocks,
            hash_algo=self.hash_algo,
            none_hash_seed=resolve_none_hash_seed(self.hash_algo, self.hash_seed),
            enable_kv_events=self.kv_events_endpoint is not None,
            frontend_workers=self.frontend_workers,
        )

    def kv_events_config(self) -> KVEventsConfig | None:
        if self.kv_events_endpoint is None:
            return None
        return KVEventsConfig(
            endpoint=self.kv_events_endpoint,
            replay_endpoint=self.kv_events_replay_endpoint,
            topic=self.kv_events_topic,
            layout=self.kv_events_layout,
        )

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode("utf-8")

    @staticmethod
    def from_json(text: str) -> ReplicaSettings:
        return msgspec.json.decode(text, type=ReplicaSettings)
