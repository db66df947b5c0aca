"""`kvgate bench scenario scale --quick`: structure, routing quality and the router's cost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.scale import QUANTUM_S, STRATEGIES, ChatShape, Users
from kvgate.bench.scenarios.scale_report import FLEET_HEADERS, markdown_tables
from kvgate.bench.virtual_fleet import (
    Pacing,
    VirtualClock,
    VirtualFleet,
    build_router,
    index_bytes,
    make_deployments,
)
from kvgate.bench.virtual_loads import RequestBuilder, UserSessions
from kvgate.cli import main
from kvgate.config.schema import RoutingSettings
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.profiles import get_profile


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    assert main(["bench", "scenario", "scale", "--quick", "--quiet", "--out", str(out)]) == 0
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_registered() -> None:
    assert SCENARIOS["scale"].module == "kvgate.bench.scenarios.scale"


def test_every_strategy_serves_every_turn(document: dict[str, Any]) -> None:
    assert document["scenario"] == "scale" and document["quick"] is True
    assert len(document["fleets"]) == 2
    for fleet in document["fleets"]:
        shape = fleet["shape"]
        users = fleet["replicas"] * shape["users_per_replica"]
        assert [run["strategy"] for run in fleet["runs"]] == list(STRATEGIES)
        for run in fleet["runs"]:
            assert run["users"] == users
            assert run["requests"] == users * shape["rounds"]
            assert run["router"]["decision_us"]["count"] == run["requests"]
            assert run["router"]["decision_us"]["p50"] > 0
            assert run["ttft_ms"]["count"] == run["requests"]


def test_prefix_kv_aware_beats_the_others_on_hit_rate(document: dict[str, Any]) -> None:
    for fleet in document["fleets"]:
        runs = {run["strategy"]: run for run in fleet["runs"]}
        aware = runs["prefix_kv_aware"]
        for other in ("round_robin", "least_busy"):
            assert aware["hit_ratio"] > runs[other]["hit_ratio"] + 0.2
            assert aware["ttft_ms"]["p50"] < runs[other]["ttft_ms"]["p50"]
        assert aware["router"]["outcomes"].get("hit", 0) > 0
    # Round robin's hits shrink as the fleet grows (each user's turns scatter wider);
    # prefix_kv_aware's shrink far less. (NOTE: the first scorer's fell 0.025 from 4 to 16
    # replicas here, the predicted-TTFT scorer's 0.086, against round robin's 0.25: every
    # replica computes the shared system prompt once, and v2 spreads new users wider.)
    small, large = ({r["strategy"]: r["hit_ratio"] for r in f["runs"]}
                    for f in document["fleets"])
    assert large["round_robin"] < small["round_robin"]
    rr_drop = small["round_robin"] - large["round_robin"]
    assert small["prefix_kv_aware"] - large["prefix_kv_aware"] < 0.5 * rr_drop


def test_only_prefix_kv_aware_keeps_an_index(document: dict[str, Any]) -> None:
    for fleet in document["fleets"]:
        for run in fleet["runs"]:
            router = run["router"]
            if run["strategy"] == "prefix_kv_aware":
                assert router["index_entries"] > 0 and router["index_bytes"] > 0
            else:
                assert "index_entries" not in router and router["outcomes"] == {}


def test_decision_cost_table(document: dict[str, Any]) -> None:
    rows = document["decision_cost"]
    assert {(r["replicas"], r["prompt_tokens"]) for r in rows} == {
        (4, 1024), (4, 8192), (16, 1024), (16, 8192)}
    for row in rows:
        assert row["links"] == row["prompt_tokens"] // 64  # 256-character fingerprint blocks
        for kind in ("cold", "warm", "shared"):
            assert row[kind]["cpu_us"]["count"] == 20 and row[kind]["cpu_us"]["p50"] > 0
            assert row[kind]["wall_us"]["count"] == 20
            # The fingerprint is part of the whole decision, and not all of it.
            beyond = row[kind]["beyond_fingerprint_cpu_us"]
            assert beyond["count"] == 20 and 0 < beyond["p50"] < row[kind]["cpu_us"]["p50"]
        assert sum(row["cpu_share"].values()) == pytest.approx(1.0, abs=0.01)
    lines = markdown_tables(document).splitlines()
    assert lines[0].count("|") == len(FLEET_HEADERS) + 1
    assert len(lines) == 2 + 6 + 1 + 2 + 4


def _run_users(fleet: VirtualFleet, builder: RequestBuilder, shape: ChatShape, num_users: int,
               think_s: float) -> None:
    users = UserSessions(Users(shape, num_users, builder.model, 0), builder, [0.0] * num_users,
                         think_s=lambda: think_s, min_think_s=QUANTUM_S)
    asyncio.run(fleet.drive(users, Pacing(quantum_s=QUANTUM_S)))


def test_in_flight_returns_to_zero_and_load_guard_sees_load() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    builder = RequestBuilder(profile)
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=300)) for _ in range(3)]
    fleet = VirtualFleet(engines, "least_busy", RoutingSettings(seed=1), model=builder.model)
    shape = ChatShape(system_tokens=64, history_tokens=64, question_tokens=8, output_tokens=8,
                      rounds=2, users_per_app=4)
    # Six users arrive at once: least_busy only spreads them if in_flight follows the engines.
    _run_users(fleet, builder, shape, 6, QUANTUM_S)
    assert len(fleet.finished) == 12
    assert all(d.stats.in_flight == 0 for d in fleet.deployments)
    assert fleet.requests_per_replica == [4, 4, 4]


def test_think_times_shorter_than_the_quantum_are_refused() -> None:
    profile = get_profile("llama-3.1-8b-h100")
    builder = RequestBuilder(profile)
    fleet = VirtualFleet([Engine(profile, EngineConfig(num_gpu_blocks=300))], "round_robin",
                         RoutingSettings(seed=1), model=builder.model)
    shape = ChatShape(system_tokens=16, history_tokens=16, question_tokens=4, output_tokens=2,
                      rounds=2)
    with pytest.raises(ValueError, match="think times"):
        _run_users(fleet, builder, shape, 1, 0.0)


def test_index_memory_replay_counts_entries() -> None:
    deployments = make_deployments(2)
    routing = RoutingSettings(seed=0)
    _, index = build_router("prefix_kv_aware", deployments, routing, VirtualClock())
    assert index is not None
    index.record("replica-0", list(range(1000)))
    index.record("replica-1", list(range(500)))
    entries, used = index_bytes(index.writes, "fleet", routing, num_deployments=2)
    assert entries == index.size() == 1500
    assert 40 * entries < used < 200 * entries  # ~75 B an entry (docs/HOW_ROUTING_WORKS.md)
