"""``offload``: one replica under memory pressure, with the CPU offload tier off and on.

Simulator figures, in-process (:mod:`kvgate.bench.virtual_fleet`): one llava-onevision-7b-a40
engine at the profile's default GPU KV (26,000 blocks of 16 tokens), driven in closed loop at
16 concurrent requests, by two workloads whose reused prefixes add up to about 2.5x that KV:

* ``text``: 500 system prompts of 2,048 tokens, 8 questions each, shuffled (SGLang's
  generated-shared-prefix shape);
* ``images``: 280 distinct 512x512 images (3,699 vision tokens each), 8 questions each.

Each workload runs with no CPU tier, with LMCache's default CPU buffer (5 GB; text only) and
with a tier that holds the working set (80,000 blocks, ~73 GB of host memory). The engine is
the one ``kvgate sim --kv-blocks 26000 --cpu-offload-blocks N`` serves; running it in-process on
a virtual clock makes the figures exact and independent of how busy this machine is.

Reported per run: TTFT p50/p95, throughput, and where prompt tokens came from (GPU prefix
cache, CPU tier, computed). ``--quick`` shrinks everything to seconds; its figures only show
the direction of the effect.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate import __version__
from kvgate.bench.api import RESULT_FORMAT, host_info
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.virtual_loads import RequestBuilder, run_closed_loop
from kvgate.bench.virtual_stats import engine_counters, records_from_stats, summarize_stats
from kvgate.bench.workloads import (
    MultimodalWorkload,
    SharedPrefixWorkload,
    Workload,
    WorkloadOptions,
    parameters,
)
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.filler import FinishReason
from kvgate.sim.profiles import Profile, get_profile
from kvgate.sim.request import EngineRequest
from kvgate.vllm_compat.hashing import MMPlaceholder

PROFILE = "llava-onevision-7b-a40"
COMMAND = "kvgate bench scenario offload --out benchmarks/results/offload.json"
#: LMCache 0.5.6's default ``max_local_cpu_size``.
LMCACHE_DEFAULT_CPU_BYTES = 5_000_000_000


@dataclass(frozen=True, slots=True)
class Case:
    """One workload on one engine size, run once per CPU tier size (0 = off)."""

    name: str
    workload: Workload
    gpu_blocks: int
    cpu_tiers: tuple[int, ...]
    concurrency: int


@dataclass(frozen=True, slots=True)
class _Prompt:
    """A rendered request, reused by every run of a case (engine requests are single-use)."""

    tag: str
    prompt_token_ids: list[int]
    output_token_ids: Sequence[int]
    finish_reason: FinishReason
    mm_items: tuple[MMPlaceholder, ...]
    num_image_tokens: int


def cases(profile: Profile, quick: bool) -> list[Case]:
    lmcache_blocks = LMCACHE_DEFAULT_CPU_BYTES // block_bytes(profile)
    if quick:
        return [
            Case("text", SharedPrefixWorkload(num_groups=24, prompts_per_group=3,
                                              system_prompt_tokens=512, question_tokens=32,
                                              output_tokens=16), 300, (0, 60, 2000), 2),
            Case("images", MultimodalWorkload(num_images=8, questions_per_image=3,
                                              resolutions="384x384", output_tokens=16),
                 300, (0, 2000), 2),
        ]
    return [
        Case("text", SharedPrefixWorkload(num_groups=500, prompts_per_group=8,
                                          output_tokens=128),
             profile.num_gpu_blocks, (0, lmcache_blocks, 80_000), 16),
        Case("images", MultimodalWorkload(num_images=280, questions_per_image=8,
                                          resolutions="512x512", output_tokens=64),
             profile.num_gpu_blocks, (0, 80_000), 16),
    ]


def block_bytes(profile: Profile) -> int:
    return profile.block_size * profile.kv_bytes_per_token


def cost_model(profile: Profile, prefix_tokens: int) -> dict[str, Any]:
    """What the engine charges to bring back ``prefix_tokens`` from the CPU tier vs recompute.

    Loading: one link latency plus ``block_size x kv_bytes_per_token / bandwidth`` per block.
    Recomputing (compute-bound prefill): tokens x compute per token plus the attention pairs of
    a causal prefill over them (n^2 / 2).
    """
    num_blocks = prefix_tokens // profile.block_size
    load_s = profile.offload_latency_s + num_blocks * profile.block_load_s
    recompute_s = (prefix_tokens * profile.compute_s_per_token
                   + prefix_tokens * (prefix_tokens + 1) // 2 * profile.attn_s_per_token_pair)
    block_recompute_s = profile.block_size * profile.compute_s_per_token
    return {
        "block_bytes": block_bytes(profile),
        "offload_bandwidth_gb_per_s": profile.offload_bandwidth_bytes_per_s / 1e9,
        "offload_latency_ms": profile.offload_latency_s * 1000,
        "block_load_us": round(profile.block_load_s * 1e6, 2),
        "block_recompute_us": round(block_recompute_s * 1e6, 1),
        "prefix_tokens": prefix_tokens,
        "prefix_load_ms": round(load_s * 1000, 2),
        "prefix_recompute_ms": round(recompute_s * 1000, 1),
        "recompute_over_load": round(recompute_s / load_s, 1) if load_s else None,
    }


def render(case: Case, builder: RequestBuilder, seed: int) -> list[_Prompt]:
    options = WorkloadOptions(model=builder.model, seed=seed, ignore_eos=True)
    prompts = []
    for index, bench_request in enumerate(case.workload.build(options)):
        request, generation = builder.build(bench_request.body, f"{case.name}-{index}")
        prompts.append(_Prompt(bench_request.tag, request.prompt_token_ids,
                               request.output_token_ids, request.final_finish_reason,
                               request.mm_items, generation.prompt.num_image_tokens))
    return prompts


def working_set_blocks(prompts: Sequence[_Prompt], block_size: int) -> int:
    """Full blocks of the prefix each tag's prompts share (a group's system prompt, an image
    and its template), summed over tags: what a cache must hold to serve every repeat."""
    shared: dict[str, list[int]] = {}
    for prompt in prompts:
        head = shared.get(prompt.tag)
        if head is None:
            shared[prompt.tag] = list(prompt.prompt_token_ids)
            continue
        length = 0
        for a, b in zip(head, prompt.prompt_token_ids, strict=False):
            if a != b:
                break
            length += 1
        del head[length:]
    return sum(len(head) // block_size for head in shared.values())


def run_case(case: Case, profile: Profile, prompts: Sequence[_Prompt], cpu_blocks: int
             ) -> tuple[dict[str, Any], list[Any]]:
    engine = Engine(profile, EngineConfig(num_gpu_blocks=case.gpu_blocks,
                                          cpu_offload_blocks=cpu_blocks))

    def requests() -> Iterator[tuple[EngineRequest, int]]:
        for index, p in enumerate(prompts):
            yield (EngineRequest(f"{case.name}-{index}", p.prompt_token_ids, p.output_token_ids,
                                 p.finish_reason, p.mm_items), p.num_image_tokens)

    fleet = run_closed_loop([engine], requests(), case.concurrency)
    summary = summarize_stats([stats for _, stats in fleet.finished])
    run = {
        "cpu_tier_blocks": cpu_blocks,
        "cpu_tier_gb": round(cpu_blocks * block_bytes(profile) / 1e9, 1),
        "summary": summary,
        "engine": engine_counters(engine),
    }
    return run, fleet.finished


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """How ``on`` does against ``off``: x-fold lower TTFT, throughput change."""
    def ratio(key: str, quantile: str) -> float | None:
        low, high = on["summary"][key][quantile], off["summary"][key][quantile]
        return round(high / low, 2) if low else None

    throughput_on = on["summary"]["output_tokens_per_s"]
    throughput_off = off["summary"]["output_tokens_per_s"]
    return {
        "ttft_p50_x_lower": ratio("ttft_ms", "p50"),
        "ttft_p95_x_lower": ratio("ttft_ms", "p95"),
        "throughput_change": (round(throughput_on / throughput_off - 1, 4)
                              if throughput_off else None),
    }


def run(options: ScenarioOptions) -> dict[str, Any]:
    profile = get_profile(PROFILE)
    builder = RequestBuilder(profile)
    console = options.console
    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "offload",
        "quick": options.quick,
        "host": host_info(),
        "source": "simulator (in-process engine, virtual clock; simulated seconds)",
        "command": COMMAND,
        "profile": PROFILE,
        "cases": {},
    }
    plot_runs: dict[str, Any] = {}
    for case in cases(profile, options.quick):
        prompts = render(case, builder, options.seed)
        working_set = working_set_blocks(prompts, profile.block_size)
        mean_prefix = working_set * profile.block_size // max(1, len({p.tag for p in prompts}))
        if console is not None:
            console.print(f"[bold]offload / {case.name}[/]: {len(prompts)} requests, working set "
                          f"{working_set:,} blocks = {working_set / case.gpu_blocks:.1f}x the "
                          f"GPU KV ({case.gpu_blocks:,} blocks), {case.concurrency} concurrent")
        runs = []
        for cpu_blocks in case.cpu_tiers:
            result, finished = run_case(case, profile, prompts, cpu_blocks)
            runs.append(result)
            tags = {f"{case.name}-{i}": p.tag for i, p in enumerate(prompts)}
            plot_runs[f"{case.name}, {_tier_label(result)}"] = records_from_stats(finished, tags)
        for result in runs[1:]:
            result["vs_off"] = compare(runs[0], result)
        document["cases"][case.name] = {
            "workload": {"name": case.workload.name, "parameters": parameters(case.workload)},
            "gpu_blocks": case.gpu_blocks,
            "concurrency": case.concurrency,
            "working_set_blocks": working_set,
            "working_set_over_gpu_kv": round(working_set / case.gpu_blocks, 2),
            "cost_model": cost_model(profile, mean_prefix),
            "equivalent_sim": (f"kvgate sim --profile {PROFILE} --kv-blocks {case.gpu_blocks} "
                               f"--cpu-offload-blocks N"),
            "runs": runs,
        }
    if console is not None:
        print_tables(document, console)
    if options.plots_dir is not None:
        from kvgate.bench.plots import plot_latency_cdfs

        path = plot_latency_cdfs(plot_runs, options.plots_dir / "offload_latency_cdf.png",
                                 title="offload: one replica, CPU tier off vs on (simulator)")
        if console is not None:
            console.print(f"plot: {path}")
    return document


def _tier_label(run: dict[str, Any]) -> str:
    blocks = run["cpu_tier_blocks"]
    return "off" if not blocks else f"{run['cpu_tier_gb']:g} GB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def table_rows(document: dict[str, Any]) -> list[list[str]]:
    """One row per run: the figures the report quotes."""
    rows = []
    for name, case in document["cases"].items():
        for run in case["runs"]:
            summary, vs = run["summary"], run.get("vs_off", {})
            ttft = summary["ttft_ms"]
            change = vs.get("throughput_change")
            rows.append([
                name, _tier_label(run), f"{ttft['p50']:,.0f}", f"{ttft['p95']:,.0f}",
                f"{summary['output_tokens_per_s']:,.0f}",
                _pct(summary["gpu_hit_ratio"]), _pct(summary["cpu_hit_ratio"]),
                _pct(summary["hit_ratio"]),
                f"{vs['ttft_p50_x_lower']:.1f}x" if vs.get("ttft_p50_x_lower") else "-",
                f"{change:+.0%}" if change is not None else "-",
            ])
    return rows


HEADERS = ("workload", "CPU tier", "TTFT p50 ms", "TTFT p95 ms", "output tok/s", "GPU hits",
           "CPU-tier hits", "all hits", "TTFT p50 x lower", "tok/s vs off")
#: The same columns, short enough for an 80-column terminal.
SHORT_HEADERS = ("case", "CPU tier", "TTFT p50", "p95", "tok/s", "GPU hit", "CPU hit", "all",
                 "p50 x", "tok/s Δ")


def print_tables(document: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), title_justify="left",
                  title="offload: one replica under memory pressure (simulator; ms, tokens/s "
                        "and shares of prompt tokens)")
    for header in SHORT_HEADERS:
        table.add_column(header, justify="left" if header in SHORT_HEADERS[:2] else "right",
                         no_wrap=True)
    for row in table_rows(document):
        table.add_row(*row)
    console.print(table)
    costs = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), title_justify="left",
                  title="the model's cost of a CPU-tier hit vs recomputing")
    for header in ("workload", "block", "load", "recompute", "prefix", "load",
                   "recompute"):
        costs.add_column(header, justify="left" if header == "workload" else "right",
                         no_wrap=True)
    for name, case in document["cases"].items():
        cost = case["cost_model"]
        costs.add_row(name, f"{cost['block_bytes'] / 2**20:.2f} MiB",
                      f"{cost['block_load_us']:g} us", f"{cost['block_recompute_us']:g} us",
                      f"{cost['prefix_tokens']:,} tokens", f"{cost['prefix_load_ms']:g} ms",
                      f"{cost['prefix_recompute_ms']:g} ms")
    console.print(costs)


def markdown_table(document: dict[str, Any]) -> str:
    """The runs as a Markdown table, for docs/BENCHMARK_REPORT.md."""
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(document)]
    return "\n".join(lines)
