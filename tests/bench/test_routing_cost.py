"""``python -m kvgate.bench.routing_cost``, the in-process measure issue 13's and 15's decision
cost targets are read from: it runs end to end, writes the JSON the report quotes, and each
figure says what its name says (the decision beyond fingerprinting is the whole decision
less a fingerprint, the ratio is the two arms' CPU), with the machine's speed beside them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kvgate.bench import routing_cost
from kvgate.bench.api import host_info, python_speed_us


def test_a_quick_run_writes_every_figure_with_the_machines_speed(tmp_path: Path) -> None:
    out = tmp_path / "routing_cost.json"
    lines: list[str] = []
    document = routing_cost.main(["--quick", "--repeat", "1", "--out", str(out)], lines.append)
    assert json.loads(out.read_text()) == document
    assert document["command"] == "python -m kvgate.bench.routing_cost --repeat 1 --quick"
    assert len(document["runs"]) == 1 and lines[0].startswith("run 1/1: ")
    run = document["runs"][0]
    assert run["python_speed_us"] > 0 and document["host"]["python_speed_us_after"] > 0
    # Every run under the server's collector thresholds, the first one included.
    server = routing_cost.gateway_settings("round_robin", 64).server
    assert document["host"]["gc_thresholds"] == list(server.gc_thresholds)
    # One run: each summary figure is that run's, as {median, min, max}.
    assert document["summary"]["python_speed_us"]["median"] == run["python_speed_us"]
    fingerprints = run["fingerprint_us"]
    assert 0 < fingerprints["8k"] < fingerprints["100k"]
    for replicas in ("64", "256"):
        decision = run["decision_us"][replicas]
        assert 0 < decision["beyond_fingerprint_us"] < decision["whole_us"]
        assert decision["in_flight_at_end"] <= routing_cost.IN_FLIGHT
    gateway = run["gateway_64_deployments"]
    rr, kv = gateway["round_robin"], gateway["prefix_kv_aware"]
    assert rr["cpu_us"] > 0 and kv["cpu_us"] > 0
    versus = gateway["prefix_kv_aware_vs_round_robin"]
    assert versus["cpu_ratio"] == round(kv["cpu_us"] / rr["cpu_us"], 3)
    assert versus["added_wall_p50_us"] == round(kv["wall_p50_us"] - rr["wall_p50_us"], 2)


def test_the_speed_yardstick_is_timed_only_where_asked() -> None:
    assert python_speed_us(loops=50, repeat=2) > 0
    assert "python_speed_us" not in host_info()
    assert host_info(speed=True)["python_speed_us"] > 0


def test_the_decision_loop_times_a_steady_state() -> None:
    # Attempts end as new ones start (warm-up's at once), so the decisions are timed against
    # a bounded queue, not one that grows through the run.
    figures = asyncio.run(routing_cost.decision_us(8, 3 * routing_cost.IN_FLIGHT))
    assert figures["in_flight_at_end"] == routing_cost.IN_FLIGHT
