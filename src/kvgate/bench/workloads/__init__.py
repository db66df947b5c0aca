"""Workloads by name: each is a frozen dataclass of parameters whose ``build`` makes requests.

To add one, write a module with a dataclass that has a ``name`` class attribute and a
``build(options) -> list[BenchRequest]`` method, and list its class here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from kvgate.bench.request import BenchRequest
from kvgate.bench.workloads.base import Workload, WorkloadOptions, parameters, with_overrides
from kvgate.bench.workloads.chat import MultiRoundChatWorkload
from kvgate.bench.workloads.multimodal import MultimodalWorkload
from kvgate.bench.workloads.shared_prefix import SharedPrefixWorkload
from kvgate.bench.workloads.trace_replay import TraceReplayWorkload

WORKLOADS: Mapping[str, type[Workload]] = MappingProxyType({
    workload.name: workload
    for workload in (MultiRoundChatWorkload, SharedPrefixWorkload, MultimodalWorkload,
                     TraceReplayWorkload)
})


def make_workload(name: str, overrides: Mapping[str, str] | None = None) -> Workload:
    """The workload called ``name`` with parameters set from ``key=value`` strings."""
    workload_type = WORKLOADS.get(name)
    if workload_type is None:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(sorted(WORKLOADS))})")
    return with_overrides(workload_type, dict(overrides or {}))


def build_requests(name: str, options: WorkloadOptions,
                   overrides: Mapping[str, str] | None = None) -> list[BenchRequest]:
    return make_workload(name, overrides).build(options)


__all__ = [
    "WORKLOADS", "MultiRoundChatWorkload", "MultimodalWorkload", "SharedPrefixWorkload",
    "TraceReplayWorkload", "Workload", "WorkloadOptions", "build_requests", "make_workload",
    "parameters",
]
