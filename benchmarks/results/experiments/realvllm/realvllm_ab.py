"""A/B of routing variants on the real vLLM (CPU) multimodal case: one fleet, arms
interleaved per seed, each arm a fresh gateway from a source tree chosen by env."""
import json, os, sys, time
from kvgate.bench.scenarios import realvllm as rv
from kvgate.bench.scenarios.realvllm_cases import cases, requests_for
from kvgate.testing.vllm import ReplicaFleet, ReplicaOptions, prepare

ARMS = json.loads(sys.argv[1])  # {"label": {"PYTHONPATH":..., "EXP_RES":...}, ...}
SEEDS = [int(s) for s in sys.argv[2].split(",")]
OUT = sys.argv[3]
CASE = sys.argv[4] if len(sys.argv) > 4 else "multimodal"
env = prepare(("vision", "text"))
case = next(c for c in cases(False) if c.name == CASE)
model = env.models[case.model]
served = model.spec.name
rows = []
with ReplicaFleet(env.venv, model, 2, ReplicaOptions(kv_cache_tokens=case.kv_cache_tokens, dev_mode=True)) as fleet:
    rv._warm_up(fleet, requests_for(case, served, 0))
    labels = list(ARMS)
    for i, seed in enumerate(SEEDS):
        requests = requests_for(case, served, seed)
        order = labels[i % len(labels):] + labels[:i % len(labels)]
        for label in order:
            saved = dict(os.environ)
            os.environ.update(ARMS[label])
            try:
                with rv._kvgate(fleet, served, "prefix_kv_aware") as url:
                    result, engine = rv._measure(label, url, requests, case, fleet, None)
            finally:
                os.environ.clear(); os.environ.update(saved)
            s = result.summary
            row = {"seed": seed, "arm": label, "ok": s["requests"]["ok"],
                   "errors": s["requests"]["errors"],
                   "ttft_p95_ms": (s.get("ttft_ms") or {}).get("p95"), **engine}
            rows.append(row)
            print(seed, label, row["prefix_cache_hit_rate"], row["requests_per_replica"],
                  row["engine_ttft_mean_ms_per_replica"], row["ttft_p95_ms"], flush=True)
            json.dump({"case": CASE, "arms": ARMS, "rows": rows}, open(OUT, "w"), indent=1)
