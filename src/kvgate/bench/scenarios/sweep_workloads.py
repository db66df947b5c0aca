"""The sweep's four workloads, and how each is offered at a target request rate.

- ``multimodal`` (LLaVA-OneVision-7B on A40): 16 images (1024x768, 4,725 vision tokens each)
  x 32 questions, shuffled, 64 output tokens; Poisson arrivals.
- ``chat`` (Llama-3.1-8B on H100): 256 users x 4 turns, every conversation starting with the
  same 1,000-token system prompt and a 2,000-token history of its own, 100-token answers;
  users arrive as a Poisson stream and each next turn comes a think time after the answer.
  Turns resend the workload's own filler answers (bodies are built before the run), so a
  turn's cached prefix ends at the previous question, as in ``kvgate bench run``.
- ``shared_prefix`` (Llama-3.1-8B on H100): 64 prefixes of 2,048 tokens x 16 questions of 128,
  128 output tokens, sent as fan-outs of 4 requests on one prefix; Poisson fan-outs.
- ``trace`` (Llama-3.1-8B on H100): a synthetic Mooncake-style trace of 1,024 entries, its own
  gaps scaled to the target rate. The Mooncake traces themselves (FAST'25, hash ids per
  512-token block) do not ship with the package (the real conversation trace is replayed on
  this fleet by ``benchmarks/results/experiments/real_trace/``);
  :func:`~kvgate.bench.trace.synthesize_trace` makes one of the same shape: a few Zipf-popular
  system prompts and conversations whose turns extend the previous turn's hash ids,
  log-uniform output lengths (8-512). The results say it is synthetic.

Requests carry ``ignore_eos``, so outputs are the workload's lengths. ``--quick``: the same
shapes with a few dozen small requests each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvgate.bench.loadgen import LoadSpec, arrival_times_s, conversation_chains
from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios.sweep_sizing import RequestShape
from kvgate.bench.text import seeded_rng
from kvgate.bench.virtual_fleet import Arrivals, Pacing
from kvgate.bench.virtual_loads import (
    OpenLoop,
    Refusals,
    RequestBuilder,
    ScriptedConversations,
    UserSessions,
)
from kvgate.bench.workloads import (
    MultimodalWorkload,
    MultiRoundChatWorkload,
    SharedPrefixWorkload,
    TraceReplayWorkload,
    Workload,
    WorkloadOptions,
)
from kvgate.sim.profiles import get_profile
from kvgate.sim.request import RequestStats

LLAVA = "llava-onevision-7b-a40"
LLAMA = "llama-3.1-8b-h100"


class Schedule(Protocol):
    """When a workload's requests arrive, at a target mean request rate."""

    @property
    def pacing(self) -> Pacing:
        """How the fleet's clock moves between dispatches."""
        ...

    def planned_arrivals_s(self, requests: Sequence[BenchRequest],
                           shapes: Sequence[RequestShape], rate_per_s: float, seed: int
                           ) -> list[float]:
        """Each request's arrival (simulated seconds): exact for open loops, an estimate
        where arrivals wait on answers."""
        ...

    def source(self, requests: Sequence[BenchRequest], planned_s: Sequence[float],
               builder: RequestBuilder, refusals: Refusals, seed: int) -> Arrivals:
        """The arrival source that sends ``requests`` as planned."""
        ...


def _ignore(_: RequestStats) -> None:
    pass


def _poisson_s(requests: Sequence[BenchRequest], rate_per_s: float, seed: int) -> list[float]:
    return arrival_times_s(requests, LoadSpec(mode="poisson", rate_per_s=rate_per_s, seed=seed))


class _OpenLoopSchedule:
    pacing = Pacing()

    def source(self, requests: Sequence[BenchRequest], planned_s: Sequence[float],
               builder: RequestBuilder, refusals: Refusals, seed: int) -> Arrivals:
        return OpenLoop([r.body for r in requests], planned_s, builder, _ignore, refusals)


class PoissonArrivals(_OpenLoopSchedule):
    """Each request alone, exponential gaps."""

    def planned_arrivals_s(self, requests: Sequence[BenchRequest],
                           shapes: Sequence[RequestShape], rate_per_s: float, seed: int
                           ) -> list[float]:
        return _poisson_s(requests, rate_per_s, seed)


@dataclass(frozen=True, slots=True)
class FanOuts(_OpenLoopSchedule):
    """Fan-outs: ``size`` requests of one prefix group (one ``tag``) ``gap_s`` apart, an
    agent's parallel calls or a batch over one document; fan-outs arrive as a Poisson stream.
    A group's fan-outs are its requests in workload order, ``size`` at a time, and each leaves
    when its last member comes up in that (shuffled) order, so groups interleave."""

    size: int = 4
    gap_s: float = 0.005

    def fan_outs(self, requests: Sequence[BenchRequest]) -> list[list[int]]:
        gathering: dict[str, list[int]] = {}
        fan_outs: list[list[int]] = []
        for index, request in enumerate(requests):
            members = gathering.setdefault(request.tag, [])
            members.append(index)
            if len(members) == self.size:
                fan_outs.append(gathering.pop(request.tag))
        return fan_outs + list(gathering.values())

    def planned_arrivals_s(self, requests: Sequence[BenchRequest],
                           shapes: Sequence[RequestShape], rate_per_s: float, seed: int
                           ) -> list[float]:
        fan_outs = self.fan_outs(requests)
        # Fan-outs are rarer than requests by their mean size: the request rate is the target.
        starts_s = _poisson_s([requests[f[0]] for f in fan_outs],
                              rate_per_s * len(fan_outs) / len(requests), seed)
        planned = [0.0] * len(requests)
        for members, start_s in zip(fan_outs, starts_s, strict=True):
            for position, index in enumerate(members):
                planned[index] = start_s + position * self.gap_s
        return planned


class TraceTimes(_OpenLoopSchedule):
    """The trace's own timestamps, every gap scaled so that the mean rate is the target."""

    def planned_arrivals_s(self, requests: Sequence[BenchRequest],
                           shapes: Sequence[RequestShape], rate_per_s: float, seed: int
                           ) -> list[float]:
        stamps = [r.at_s or 0.0 for r in requests]
        natural_per_s = (len(stamps) - 1) / (max(stamps) - min(stamps))
        return arrival_times_s(requests, LoadSpec(mode="timestamps",
                                                  speedup=rate_per_s / natural_per_s))


@dataclass(frozen=True, slots=True)
class Sessions:
    """Users arrive as a Poisson stream (rate = target / mean turns per user); a user's next
    turn comes ``min_think_s`` + Exp(``mean_think_s``) after the previous answer. Planned
    arrivals (for the working set) take each turn as its cold end-to-end time plus the mean
    think time after the previous one."""

    mean_think_s: float = 1.0
    min_think_s: float = 0.1

    @property
    def pacing(self) -> Pacing:
        return Pacing(quantum_s=self.min_think_s)

    def planned_arrivals_s(self, requests: Sequence[BenchRequest],
                           shapes: Sequence[RequestShape], rate_per_s: float, seed: int
                           ) -> list[float]:
        chains = conversation_chains(requests)
        firsts_s = _poisson_s([requests[c[0]] for c in chains],
                              rate_per_s * len(chains) / len(requests), seed)
        planned = [0.0] * len(requests)
        for chain, at_s in zip(chains, firsts_s, strict=True):
            for index in chain:
                planned[index] = at_s
                at_s += shapes[index].cold_e2e_s + self.min_think_s + self.mean_think_s
        return planned

    def source(self, requests: Sequence[BenchRequest], planned_s: Sequence[float],
               builder: RequestBuilder, refusals: Refusals, seed: int) -> Arrivals:
        rng = seeded_rng("sweep.think", seed)
        firsts_s = [planned_s[chain[0]] for chain in conversation_chains(requests)]
        return UserSessions(
            ScriptedConversations(requests), builder, firsts_s,
            think_s=lambda: self.min_think_s + rng.expovariate(1 / self.mean_think_s),
            min_think_s=self.min_think_s, refusals=refusals)


@dataclass(frozen=True, slots=True)
class SweepWorkload:
    name: str
    profile: str
    workload: Workload
    schedule: Schedule = field(default_factory=PoissonArrivals)
    note: str = ""

    def build(self, seed: int) -> list[BenchRequest]:
        model = get_profile(self.profile).served_model_name
        return self.workload.build(WorkloadOptions(model=model, seed=seed, ignore_eos=True))


@dataclass(frozen=True, slots=True)
class TraceFile:
    """A trace of one's own (Mooncake's JSONL: timestamp, input and output lengths, hash ids
    per 512-token block) swept in place of the four workloads: ``count`` entries from entry
    ``first`` (``--quick``: at most 40), on Llama-3.1-8B/H100 replicas, the trace's own gaps
    scaled to each cell's load."""

    path: str
    first: int = 0
    count: int = 1024

    def __post_init__(self) -> None:
        if self.first < 0 or self.count < 1:
            raise ValueError("a trace window needs FIRST >= 0 and COUNT >= 1")


QUICK_TRACE_ENTRIES = 40


def sweep_workloads(quick: bool, trace: TraceFile | None = None) -> tuple[SweepWorkload, ...]:
    if trace is not None:
        count = min(trace.count, QUICK_TRACE_ENTRIES) if quick else trace.count
        return (SweepWorkload(
            "trace_file", LLAMA,
            TraceReplayWorkload(path=trace.path, first_entry=trace.first, max_entries=count),
            TraceTimes(), f"{trace.path}: {count} entries from entry {trace.first}"),)
    if quick:
        return (
            SweepWorkload("multimodal", LLAVA, MultimodalWorkload(
                num_images=4, resolutions="384x384", questions_per_image=8, output_tokens=16)),
            SweepWorkload("chat", LLAMA, MultiRoundChatWorkload(
                num_users=12, num_rounds=3, system_prompt_tokens=300, user_history_tokens=400,
                question_tokens=20, answer_tokens=16), Sessions(mean_think_s=0.5)),
            SweepWorkload("shared_prefix", LLAMA, SharedPrefixWorkload(
                num_groups=6, prompts_per_group=6, system_prompt_tokens=600,
                question_tokens=32, output_tokens=16), FanOuts(size=3)),
            SweepWorkload("trace", LLAMA, TraceReplayWorkload(synthetic_requests=40),
                          TraceTimes(), "synthetic Mooncake-style trace"),
        )
    return (
        SweepWorkload("multimodal", LLAVA, MultimodalWorkload(
            num_images=16, resolutions="1024x768", questions_per_image=32, output_tokens=64)),
        SweepWorkload("chat", LLAMA, MultiRoundChatWorkload(num_users=256, num_rounds=4),
                      Sessions()),
        SweepWorkload("shared_prefix", LLAMA, SharedPrefixWorkload(
            num_groups=64, prompts_per_group=16, output_tokens=128), FanOuts()),
        SweepWorkload("trace", LLAMA, TraceReplayWorkload(synthetic_requests=1024),
                      TraceTimes(), "synthetic Mooncake-style trace"),
    )
