"""``simfit``: measure the real vLLM CPU replicas the suite starts, and fit the simulator to them.

One replica of each tiny model (``kvgate.testing.vllm``: tiny-llama, tiny-llava), started with
the options the ``realvllm`` scenario gives its replicas (the same KV budget, block size 32,
prefix caching, eager mode, dev endpoints), is probed alone, one request or one batch at a
time, in ``ROUNDS`` rounds of ``REPEATS`` passes over every probe:

- ``prefill``: cold text prompts of ten lengths (each prompt distinct, so nothing is
  cached), 4 output tokens: client TTFT, and the replica's own queue and prefill times;
- ``warm``: the last prompt again (its blocks cached): what a hit leaves to compute;
- ``decode_batch``: 1, 2, 4, 8 short prompts at once, 64 tokens each: mean inter-token gap;
- ``decode_context``: one prompt at a time of 64 to 4,000 tokens, 64 tokens: gap vs context;
- ``image_cold`` / ``image_warm`` (tiny-llava): a new 512x512 image with a short question
  (the ``realvllm`` multimodal case's shape), then the same image with another question.

The replica's ``vllm:cache_config_info`` gives the KV blocks and block size it allocated.
:mod:`kvgate.bench.simfit_derive` fits each round; the result carries every point, each
round's fits and constants, their spread over rounds, and the medians that the ``cpu-tiny-*``
profiles in :mod:`kvgate.sim.profiles` copy. Times are wall seconds on this machine, with
whatever else runs on it: the result records the load average before and after.

Run: kvgate bench scenario simfit --out benchmarks/results/simfit.json  (about 2 minutes;
``--quick``: one round, fewer points, numbers not meaningful). The fits are a pure function of
the recorded points: ``python -m kvgate.bench.scenarios.simfit --refit FILE`` recomputes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvgate.bench.images import generate_png, png_data_url
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.realvllm_cases import cases
from kvgate.bench.simfit_derive import CONSTANTS, derive
from kvgate.bench.simfit_probe import (
    Observation,
    chat_body,
    observe,
    parse_info_labels,
    read_metrics_text,
)
from kvgate.bench.text import filler
from kvgate.testing.vllm import BuiltModel, ReplicaFleet, ReplicaOptions, VllmEnvironment, prepare

COMMAND = "kvgate bench scenario simfit --out benchmarks/results/simfit.json"
#: Rounds, each fitted on its own (their spread is the result's uncertainty); within a round
#: every probe runs REPEATS times, interleaved, and the fits take each probe's median.
ROUNDS = 3
REPEATS = 3
#: Filler pieces per cold prompt (+14 template tokens); all within one prefill chunk (vLLM's
#: CPU default max_num_batched_tokens is 2,048), so each prefill is one engine step.
PREFILL_LENGTHS = (32, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2000)
CONTEXT_LENGTHS = (64, 1024, 2000, 4000)
BATCH_SIZES = (1, 2, 4, 8)
DECODE_TOKENS = 64
PREFILL_OUTPUT_TOKENS = 4
BATCH_PROMPT_PIECES = 64
IMAGES_PER_PASS = 2
IMAGE_SIZE_PX = 512
QUESTION_PIECES = 24
#: vLLM 0.32's defaults on CPU for `vllm serve` (vllm/engine/arg_utils.py,
#: ``_get_default_max_num_batched_tokens_and_seqs``, the ``is_cpu()`` branch), and its encoder
#: cache, sized to max_num_batched_tokens (vllm/config/scheduler.py). Not measured.
VLLM_CPU_SCHEDULER = {"max_num_batched_tokens": 2048, "max_num_seqs": 128,
                      "encoder_cache_tokens": 2048}
_CACHE_LABELS = ("block_size", "num_gpu_blocks", "kv_cache_size_tokens",
                 "kv_cache_memory_bytes", "enable_prefix_caching", "prefix_caching_hash_algo")


def _kv_cache_tokens() -> int:
    """The KV budget the realvllm scenario gives each replica (both of its cases agree)."""
    budgets = {case.kv_cache_tokens for case in cases(quick=False)}
    if len(budgets) != 1:
        raise ValueError(f"realvllm's cases disagree on the KV budget: {budgets}")
    return budgets.pop()


def _point(kind: str, where: tuple[int, int], observation: Observation, **extra: Any
           ) -> dict[str, Any]:
    probes, server = observation.probes, observation.server
    first = probes[0]
    gaps = sorted(g for p in probes for g in p.gaps_s[1:])  # [0]: role chunk -> first token
    point: dict[str, Any] = {
        "kind": kind, "round": where[0], "repeat": where[1], "batch": len(probes),
        "prompt_tokens": first.prompt_tokens, "cached_tokens": first.cached_tokens,
        "new_tokens": first.prompt_tokens - first.cached_tokens,
        "output_tokens": first.output_tokens,
        "client_ttft_s": first.ttft_s,
        "queue_s": server.queue_s / len(probes), "prefill_s": server.prefill_s / len(probes),
        "server_ttft_s": server.ttft_s / len(probes),
        "server_itl_s": server.mean_itl_s,
        "client_gap_p50_s": statistics.median(gaps) if gaps else None,
        "prefix_hits": server.prefix_hits,
    }
    if len(probes) == 1:
        point["frontend_s"] = observation.frontend_s
    point.update(extra)
    return point


class _Prober:
    """The measurement plan against one replica; every prompt text is new."""

    def __init__(self, url: str, model: BuiltModel, quick: bool) -> None:
        self._url = url
        self._model = model.spec.name
        self._vision = model.spec.image_tokens > 0
        self._quick = quick
        self._serial = 0

    def _text(self, pieces: int) -> str:
        self._serial += 1
        return filler(pieces, "simfit", self._model, self._serial)

    def _image(self) -> str:
        self._serial += 1
        return png_data_url(generate_png(IMAGE_SIZE_PX, IMAGE_SIZE_PX, "simfit", self._serial))

    def _alone(self, content: str | list[dict[str, Any]], max_tokens: int) -> Observation:
        return observe(self._url, [chat_body(self._model, content, max_tokens)])

    def warm_up(self) -> None:
        """The first requests of a fresh process pay one-time set-up; never measured."""
        for _ in range(2):
            self._alone(self._text(64), PREFILL_OUTPUT_TOKENS)
            if self._vision:
                self._alone(self._image_content(self._image()), PREFILL_OUTPUT_TOKENS)

    def _image_content(self, url: str) -> list[dict[str, Any]]:
        return [{"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": self._text(QUESTION_PIECES)}]

    def round(self, index: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        for repeat in range(1 if self._quick else REPEATS):
            points += self._pass((index, repeat))
        cold = [p for p in points if p["kind"] in ("prefill", "image_cold")]
        if any(p["cached_tokens"] for p in cold):
            log(f"round {index}: a cold prompt hit the prefix cache: "
                f"{[p['cached_tokens'] for p in cold]}")
        return points

    def _pass(self, where: tuple[int, int]) -> list[dict[str, Any]]:
        """Every probe once."""
        points = []
        lengths = PREFILL_LENGTHS[::3] if self._quick else PREFILL_LENGTHS
        last = ""
        for pieces in lengths:
            last = self._text(pieces)
            points.append(_point("prefill", where, self._alone(last, PREFILL_OUTPUT_TOKENS)))
        points.append(_point("warm", where, self._alone(last, PREFILL_OUTPUT_TOKENS)))
        for batch in BATCH_SIZES[:3] if self._quick else BATCH_SIZES:
            bodies = [chat_body(self._model, self._text(BATCH_PROMPT_PIECES), DECODE_TOKENS)
                      for _ in range(batch)]
            observation = observe(self._url, bodies)
            points.append(_point("decode_batch", where, observation,
                                 mean_context_tokens=_mean_context(observation)))
        for pieces in CONTEXT_LENGTHS[::2] if self._quick else CONTEXT_LENGTHS:
            observation = self._alone(self._text(pieces), DECODE_TOKENS)
            points.append(_point("decode_context", where, observation,
                                 mean_context_tokens=_mean_context(observation)))
        if self._vision:
            for _ in range(1 if self._quick else IMAGES_PER_PASS):
                url = self._image()
                points.append(_point("image_cold", where, self._alone(
                    self._image_content(url), PREFILL_OUTPUT_TOKENS)))
                points.append(_point("image_warm", where, self._alone(
                    self._image_content(url), PREFILL_OUTPUT_TOKENS)))
        return points


def _mean_context(observation: Observation) -> float:
    """Tokens in the KV cache during an average decode step of the batch."""
    probe = observation.probes[0]
    return probe.prompt_tokens + probe.output_tokens / 2


def measure_model(env: VllmEnvironment, kind: str, options: ScenarioOptions,
                  log: Callable[[str], None]) -> dict[str, Any]:
    model = env.models[kind]
    replica_options = ReplicaOptions(kv_cache_tokens=_kv_cache_tokens(), dev_mode=True)
    started = time.monotonic()
    with ReplicaFleet(env.venv, model, 1, replica_options) as fleet:
        replica = fleet.replicas[0]
        log(f"{model.spec.name}: up in {replica.startup_s} s")
        labels = parse_info_labels(read_metrics_text(replica.url))
        prober = _Prober(replica.url, model, options.quick)
        prober.warm_up()
        points: list[dict[str, Any]] = []
        load_per_round = []
        for index in range(1 if options.quick else ROUNDS):
            load_per_round.append(_load_average()[0])
            points += prober.round(index, log)
            log(f"{model.spec.name}: round {index} done ({len(points)} points)")
        rss_gib = round(replica.rss_bytes() / 2**30, 2)
    fitted = derive(points, model.spec.image_tokens)
    return {
        "model": {"name": model.spec.name, "kind": kind, "path": str(model.path),
                  "image_tokens": model.spec.image_tokens,
                  "kv_bytes_per_token": model.spec.kv_bytes_per_token,
                  "num_parameters": model.info.get("num_parameters")},
        "replica_options": {"kv_cache_tokens": replica_options.kv_cache_tokens,
                            "kv_cache_bytes": replica_options.kv_cache_bytes(model),
                            "block_size": replica_options.block_size,
                            "max_model_len": replica_options.model_len(model),
                            "cpu_bind": replica_options.cpu_bind},
        "cache_config": {key: labels.get(key) for key in _CACHE_LABELS},
        "scheduler_defaults": VLLM_CPU_SCHEDULER,
        "startup_s": replica.startup_s, "rss_gib": rss_gib,
        "load_average_1m_per_round": load_per_round,
        "wall_s": round(time.monotonic() - started, 1),
        **fitted,
        "points": points,
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_table(document: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="simfit: fitted constants (all rounds pooled; each round's own fit)")
    table.add_column("constant")
    for kind, result in document["models"].items():
        table.add_column(f"{kind} ({result['model']['name']})", justify="right")
    for name in CONSTANTS:
        cells = []
        for result in document["models"].values():
            s = result["spread"][name]
            cells.append(f"{result['profile_constants'][name]:.3g} "
                         f"({s['min']:.2g} .. {s['max']:.2g})")
        table.add_row(name, *cells)
    for label in ("num_gpu_blocks", "block_size"):
        table.add_row(label, *(str(r["cache_config"][label])
                               for r in document["models"].values()))
    console.print(table)


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("simfit starts its own replicas; --target is not used")
    console = options.console

    def log(message: str) -> None:
        if console is not None:
            console.print(f"[dim]{message}")

    started = time.monotonic()
    load_before = _load_average()
    env = prepare(("text", "vision"), log=log)
    models = {kind: measure_model(env, kind, options, log) for kind in ("text", "vision")}
    document = {
        "scenario": "simfit",
        "command": COMMAND + (" --quick" if options.quick else ""),
        "quick": options.quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "conditions": {"cpus": os.cpu_count(), "load_average_before": load_before,
                       "load_average_after": _load_average(),
                       "note": "wall-clock times on a shared machine; one replica at a time, "
                               "all its processes on core 0 (API server, engine core, "
                               "worker), the client unpinned"},
        "engine": {"vllm": env.venv.versions},
        "models": models,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if console is not None:
        print_table(document, console)
    return document


def refit(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every model's fits recomputed from its recorded points."""
    for result in document["models"].values():
        result.update(derive(result["points"], result["model"]["image_tokens"]))
        # Keep the points last, as measure_model writes them.
        result["points"] = result.pop("points")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvgate.bench.scenarios.simfit",
                                     description="Recompute a simfit result's fits from its "
                                                 "recorded points.")
    parser.add_argument("--refit", type=Path, required=True, help="a simfit result JSON")
    parser.add_argument("--out", type=Path, default=None, help="default: overwrite --refit")
    args = parser.parse_args(argv)
    document = refit(json.loads(args.refit.read_text()))
    (args.out or args.refit).write_text(json.dumps(document, indent=2) + "\n")
    for kind, result in document["models"].items():
        print(kind, json.dumps(result["profile_constants"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
