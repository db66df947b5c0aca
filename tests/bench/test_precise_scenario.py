"""`kvgate bench scenario precise --quick`: every arm runs end to end on a fresh fleet."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.precise import ARMS, QUICK
from kvgate.cli import main


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("precise") / "precise.json"
    assert main(["bench", "scenario", "precise", "--quick", "--quiet", "--out", str(out)]) == 0
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_registered() -> None:
    assert SCENARIOS["precise"].module == "kvgate.bench.scenarios.precise"


def test_fleet_arms_serve_every_request_and_read_the_replicas_counters(
        document: dict[str, Any]) -> None:
    assert document["scenario"] == "precise" and document["quick"] is True
    assert document["setup"]["working_set_tokens"] > document["setup"]["capacity_tokens"]
    for name in ARMS:
        summary = document["runs"][name]["summary"]
        assert summary["requests"]["ok"] == QUICK.num_requests, name
        assert summary["requests"]["errors"] == 0, name
        engine = document["engine"][name]
        # The replicas' own counters: every prompt token was queried once.
        assert engine["prefix_cache_queries_tokens"] >= QUICK.num_requests * QUICK.prefix_tokens
        assert 0 < engine["prefix_cache_hit_rate"] < 1, name


def test_precise_arms_follow_the_replicas_events(document: dict[str, Any]) -> None:
    for name in ("precise", "precise_events_only"):
        states = document["engine"][name]["kv_state_at_end"]
        assert len(states) == QUICK.replicas
        for state in states.values():
            assert state["mode"] == "precise", (name, state)
            assert state["last_seq"] is not None and state["last_seq"] > 0
    # The approximate arm follows no events: its state is the TTFT scorer's ledger only.
    for state in document["engine"]["approximate"]["kv_state_at_end"].values():
        assert "mode" not in state and state["ttft_samples"] > 0


def test_virtual_runs_cover_both_workloads_and_targets_are_reported(
        document: dict[str, Any]) -> None:
    for key in ("virtual", "virtual_steady"):
        arms = document[key]["arms"]
        assert set(arms) == set(ARMS)
        for result in arms.values():
            assert result["requests"] == QUICK.num_requests
    assert set(document["targets"]) == {"fleet", "virtual"}
    for verdicts in document["targets"].values():
        assert set(verdicts) == {"hit_rate_higher", "ttft_p95_lower"}
