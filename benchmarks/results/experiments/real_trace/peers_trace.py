"""A window of the real conversation trace through the peers scenario's HTTP fleet: KVGate's
strategies, vllm-router (round_robin, consistent_hash, cache_aware) and sglang-router
(cache_aware) in front of the same ``kvgate sim`` replicas, one run each (real processes,
wall clock; the replicas' times are modelled at ``--time-scale``).

python peers_trace.py TRACE.jsonl FIRST:COUNT KV_BLOCKS OUT.json [ROUNDS]

The fleet, routers, flushing and figures are the peers scenario's
(:func:`kvgate.bench.scenarios.peers.run_case`), with two changes for this trace: the replicas
are Llama-3.1-8B/H100 (the sweep's profile; the peers scenario's LLaVA/A40 has a 32k context
and the trace's prompts reach 123k tokens), and each request's session key (``user`` and
``x-session-id``, what consistent hashing is deployed with) is its conversation: the trace's
second hash id, which every turn of a conversation repeats (the first, block 0, is shared by
every request). The workload is the trace window, closed loop.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from rich.console import Console

from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.peers import (
    KVGATE_ROUTERS,
    PEER_ROUTERS,
    TIME_SCALE,
    PeerCase,
    _install_peers,
    run_case,
)
from kvgate.bench.scenarios.peers_report import headline
from kvgate.bench.trace import load_trace
from kvgate.bench.workloads import TraceReplayWorkload, WorkloadOptions

REPLICAS = 4
CONCURRENCY = 16
PROFILE = "llama-3.1-8b-h100"


@dataclass(frozen=True, slots=True)
class ConversationKeyed:
    """The trace window, each request tagged (session key) by its conversation."""

    name: ClassVar[str] = "trace"
    path: str
    first_entry: int
    max_entries: int

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        requests = TraceReplayWorkload(path=self.path, first_entry=self.first_entry,
                                       max_entries=self.max_entries).build(options)
        entries = load_trace(self.path)[self.first_entry:self.first_entry + self.max_entries]
        return [replace(r, tag=f"conversation{e.hash_ids[1 if len(e.hash_ids) > 1 else 0]}")
                for r, e in zip(requests, entries, strict=True)]


def main(trace: str, window: str, kv_blocks: int, out: str, rounds: int) -> None:
    first, count = (int(x) for x in window.split(":"))
    console = Console()
    options = ScenarioOptions(console=console)
    unavailable: dict[str, str] = {}
    installs = _install_peers(options, unavailable)
    workload = ConversationKeyed(trace, first, count)
    case = PeerCase("conversation", f"Mooncake conversation trace, entries {first}-"
                    f"{first + count - 1}, {REPLICAS} replicas", REPLICAS, kv_blocks, workload,
                    CONCURRENCY, TIME_SCALE, profile=PROFILE)
    routers = list(KVGATE_ROUTERS) + list(PEER_ROUTERS)
    section = run_case(case, routers, installs, options, unavailable, rounds=rounds)
    section["workload"]["parameters"]["path"] = Path(trace).name
    section["unavailable"] = unavailable
    Path(out).write_text(json.dumps(section, indent=1))
    for label, numbers in section["routers"].items():
        h = headline(numbers)
        console.print(f"{label:28s} " + "  ".join(f"{k} {v}" for k, v in h.items()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
         int(sys.argv[5]) if len(sys.argv) > 5 else 1)
