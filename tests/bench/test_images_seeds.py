"""images-seeds: every arm on every (questions, seed), the summary's ratios and counts."""

from __future__ import annotations

from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.images_seeds import ARMS, run, summarize


def row(q: int, seed: int, arm: str, p95: float, hit: float) -> dict[str, object]:
    return {"questions": q, "seed": seed, "arm": arm, "ttft_p95_ms": p95, "hit_rate": hit,
            "errors": 0}


def test_the_summary_counts_seeds_meeting_the_bar_and_precise_at_least_approximate() -> None:
    rows = []
    for seed, (rr, new, precise) in enumerate([(400, 200, 190), (300, 200, 250)], start=1):
        for arm in ARMS:
            p95 = {"round_robin": rr, "prefix_kv_aware": new, "precise_kv": precise}.get(arm, 500)
            rows.append(row(8, seed, arm, p95, 0.9))
    summary = summarize(rows, [1, 2])["8"]
    assert summary["rr_over_new_p95"] == {"1": 2.0, "2": 1.5}
    assert summary["seeds_meeting_1_8x"] == 1
    assert summary["precise_at_least_approximate"] == 1  # seed 2: precise's p95 is worse
    assert summary["mean_p95_ms"]["round_robin"] == 350


def test_a_quick_run_routes_every_request_of_every_arm_without_errors() -> None:
    document = run(ScenarioOptions(quick=True, seeds=2))
    rows = document["rows"]
    assert len(rows) == 1 * 2 * len(ARMS)
    assert {r["arm"] for r in rows} == set(ARMS)
    requests = {r["requests"] for r in rows}
    assert len(requests) == 1 and requests.pop() > 0  # every arm served the same requests
    assert all(r["errors"] == 0 for r in rows)
    # KV-aware arms reuse the images; round robin scatters them over both replicas.
    by_arm = {r["arm"]: r for r in rows if r["seed"] == document["seeds"][0]}
    assert by_arm["prefix_kv_aware"]["hit_rate"] > by_arm["round_robin"]["hit_rate"]
