"""A/B of routing variants on the real vLLM (CPU) multimodal case: one fleet, arms interleaved
per seed (rotated order), each arm a fresh gateway whose source tree and switches come from
environment variables.

python benchmarks/results/experiments/realvllm/realvllm_ab.py \
    '{"head": {"PYTHONPATH": "/tmp/wt/src"}, "fix": {"PYTHONPATH": "src"}}' 0,1,2 out.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kvgate.bench.scenarios import realvllm as rv
from kvgate.bench.scenarios.realvllm_cases import cases, requests_for
from kvgate.testing.vllm import ReplicaFleet, ReplicaOptions, prepare


def main(arms: dict[str, dict[str, str]], seeds: list[int], out: Path,
         case_name: str = "multimodal") -> None:
    env = prepare(("vision", "text"))
    case = next(c for c in cases(False) if c.name == case_name)
    model = env.models[case.model]
    served = model.spec.name
    rows: list[dict[str, object]] = []
    options = ReplicaOptions(kv_cache_tokens=case.kv_cache_tokens, dev_mode=True)
    with ReplicaFleet(env.venv, model, 2, options) as fleet:
        rv._warm_up(fleet, requests_for(case, served, 0))
        labels = list(arms)
        for i, seed in enumerate(seeds):
            requests = requests_for(case, served, seed)
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                saved = dict(os.environ)
                os.environ.update(arms[label])
                try:
                    with rv._kvgate(fleet, served, "prefix_kv_aware") as url:
                        result, engine = rv._measure(label, url, requests, case, fleet, None)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                summary = result.summary
                row = {"seed": seed, "arm": label, "ok": summary["requests"]["ok"],
                       "errors": summary["requests"]["errors"],
                       "ttft_p95_ms": (summary.get("ttft_ms") or {}).get("p95"), **engine}
                rows.append(row)
                print(seed, label, row["prefix_cache_hit_rate"], row["requests_per_replica"],
                      row["engine_ttft_mean_ms_per_replica"], row["ttft_p95_ms"], flush=True)
                out.write_text(json.dumps({"case": case_name, "arms": arms, "rows": rows},
                                          indent=1))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], Path(sys.argv[3]),
         *sys.argv[4:5])
