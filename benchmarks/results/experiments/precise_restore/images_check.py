"""images-seeds' two KVGate arms only, for a quick A/B of precise mode (virtual time, ~30 s).

PYTHONPATH=<tree>/src python images_check.py QUESTIONS FIRST_SEED OUT.json
e.g. ``50,24,8 1`` (seeds 1-10) or ``50,24,8 11`` (seeds 11-20). Prints per seed each arm's
TTFT p95, hit rate and cold decisions, and how many seeds have precise_kv at least as good
as prefix_kv_aware on both (issue 13's bar: 9 of 10).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor

from kvgate.bench.scenarios.images_seeds import _run_job

ARMS = ("prefix_kv_aware", "precise_kv")


def main(questions: list[int], first_seed: int, out: str) -> None:
    seeds = range(first_seed, first_seed + 10)
    jobs = [(q, s, arm, False) for q in questions for s in seeds for arm in ARMS]
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(_run_job, jobs))
    by = {(r["questions"], r["seed"], r["arm"]): r for r in rows}
    for q in questions:
        good = 0
        for s in seeds:
            a, p = by[(q, s, ARMS[0])], by[(q, s, ARMS[1])]
            ok = p["hit_rate"] >= a["hit_rate"] and p["ttft_p95_ms"] <= a["ttft_p95_ms"]
            good += ok
            print(f"q={q} seed={s} approximate {a['ttft_p95_ms']:8.0f} ms {a['hit_rate']:.4f} "
                  f"cold={a['route_outcomes'].get('cold')}  precise {p['ttft_p95_ms']:8.0f} ms "
                  f"{p['hit_rate']:.4f} cold={p['route_outcomes'].get('cold')}"
                  f"  {'ok' if ok else '--'}")
        print(f"q={q}: precise at least as good in {good} of 10 seeds")
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main([int(q) for q in sys.argv[1].split(",")], int(sys.argv[2]), sys.argv[3])
