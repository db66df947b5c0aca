"""Per arm and case, the realvllm runs of each setting side by side (see README.md).

python summarize.py threads=base1.json,base2.json pinned=pin1.json,pin2.json
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

ARMS = ("round_robin", "least_busy", "prefix_kv_aware", "precise_kv", "vllm-router/cache_aware")


def arm_figures(case: dict[str, Any], arm: str) -> dict[str, Any] | None:
    """One arm's figures in one case of one run; the hit rate and split are the replicas'."""
    run, engine = case["runs"].get(arm), case["comparison"].get(arm)
    if run is None or engine is None:
        return None
    summary = run["summary"]
    real = engine["prefix_cache_hit_rate"]
    requests = engine["requests_per_replica"]
    factors = (case["fitted_sim"].get("speed_matched", {}).get("arms", {}).get(arm, {})
               .get("replica_time_factors"))
    return {"hit_rate": real, "ttft_p95_ms": summary["ttft_ms"]["p95"],
            "largest_share": max(requests) / sum(requests) if len(requests) > 1 else None,
            "errors": summary["requests"]["errors"],
            "slower_replica_time": max(factors) / min(factors) if factors else None}


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        result: dict[str, Any] = json.load(f)
    return result


def main(settings: list[tuple[str, list[str]]]) -> None:
    for case_name in ("multimodal", "text"):
        print(f"## {case_name}\n")
        print("| arm | setting | hit rate per run | largest replica share | TTFT p95 ms, "
              "median (range) | slower replica's time (x the faster), median | errors |")
        print("|---|---|---|---|---|---|---|")
        for arm in ARMS:
            for label, files in settings:
                rows = [arm_figures(load(f)["cases"][case_name], arm) for f in files]
                found = [r for r in rows if r is not None]
                if not found:
                    continue
                hit = " / ".join("-" if r["hit_rate"] is None else f"{r['hit_rate']:.3f}"
                                 for r in found)
                shares = [r["largest_share"] for r in found if r["largest_share"] is not None]
                share = f"{max(shares):.2f} max" if shares else "-"
                p95 = [r["ttft_p95_ms"] for r in found]
                slow = [r["slower_replica_time"] for r in found
                        if r["slower_replica_time"] is not None]
                slower = f"{statistics.median(slow):.2f} ({max(slow):.2f} max)" if slow else "-"
                print(f"| {arm} | {label} | {hit} | {share} | {statistics.median(p95):.0f} "
                      f"({min(p95):.0f}-{max(p95):.0f}) | {slower} | "
                      f"{sum(r['errors'] for r in found)} |")
        print()


if __name__ == "__main__":
    main([(arg.split("=", 1)[0], arg.split("=", 1)[1].split(",")) for arg in sys.argv[1:]])
