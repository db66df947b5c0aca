"""`kvgate bench scenario precise-seeds --quick`: every arm, every seed, both workloads."""

from __future__ import annotations

import json
from pathlib import Path

from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.precise import ARMS
from kvgate.cli import main


def test_seeds_are_summarised_per_arm_and_counted_against_the_approximate_arm(
        tmp_path: Path) -> None:
    assert SCENARIOS["precise-seeds"].module == "kvgate.bench.scenarios.precise_seeds"
    out = tmp_path / "precise_seeds.json"
    assert main(["bench", "scenario", "precise-seeds", "--quick", "--quiet",
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["seeds"] == 2
    assert document["command"].startswith("kvgate bench scenario precise-seeds")
    for workload in ("fan_out", "steady"):
        section = document[workload]
        assert set(section["summary"]) == set(ARMS)
        for name in ARMS:
            assert [row["seed"] for row in section["per_seed"][name]] == [0, 1]
            assert 0 < section["summary"][name]["hit_rate_mean"] < 1
            if name != "approximate":
                assert 0 <= section["summary"][name]["seeds_higher_hit_rate"] <= 2
    assert document["steady"]["setup"]["burst_share"] == 0.0
