"""`kvgate bench scenario offload --quick`: structure, and the CPU tier's effect on one replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.offload import (
    HEADERS,
    cost_model,
    markdown_table,
    working_set_blocks,
)
from kvgate.cli import main
from kvgate.sim.profiles import get_profile


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("offload") / "offload.json"
    assert main(["bench", "scenario", "offload", "--quick", "--quiet", "--out", str(out)]) == 0
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_registered() -> None:
    assert SCENARIOS["offload"].module == "kvgate.bench.scenarios.offload"


def test_document_structure(document: dict[str, Any]) -> None:
    assert document["scenario"] == "offload" and document["quick"] is True
    assert set(document["cases"]) == {"text", "images"}
    for case in document["cases"].values():
        # Memory pressure: the reused prefixes need 2-3x what the GPU holds.
        assert 2.0 <= case["working_set_over_gpu_kv"] <= 3.0
        runs = case["runs"]
        assert runs[0]["cpu_tier_blocks"] == 0 and len(runs) >= 2
        for run in runs:
            summary = run["summary"]
            assert summary["requests"] > 0
            assert summary["ttft_ms"]["count"] == summary["requests"]
            assert summary["preempted_requests"] == 0
        assert "vs_off" not in runs[0]
        assert all("vs_off" in run for run in runs[1:])


def test_a_tier_holding_the_working_set_serves_prefixes_from_the_cpu(
        document: dict[str, Any]) -> None:
    for case in document["cases"].values():
        off, on = case["runs"][0], case["runs"][-1]
        assert on["cpu_tier_blocks"] >= case["working_set_blocks"]
        assert off["summary"]["cpu_hit_ratio"] == 0.0
        assert on["summary"]["cpu_hit_ratio"] > 0.2
        assert on["summary"]["hit_ratio"] > off["summary"]["hit_ratio"] + 0.2
        # Spilling on eviction leaves the GPU's own LRU as it was.
        assert on["summary"]["gpu_hit_ratio"] == pytest.approx(off["summary"]["gpu_hit_ratio"],
                                                               abs=0.02)
        assert on["engine"]["cpu_tier_blocks_loaded"] > 0
        assert on["summary"]["ttft_ms"]["p50"] < off["summary"]["ttft_ms"]["p50"]
        assert on["vs_off"]["throughput_change"] > 0


def test_a_small_tier_helps_less_than_a_large_one(document: dict[str, Any]) -> None:
    off, small, large = document["cases"]["text"]["runs"]
    assert small["cpu_tier_blocks"] < large["cpu_tier_blocks"]
    ratios = [run["summary"]["hit_ratio"] for run in (off, small, large)]
    assert ratios == sorted(ratios) and ratios[0] < ratios[2]


def test_markdown_table_has_a_row_per_run(document: dict[str, Any]) -> None:
    lines = markdown_table(document).splitlines()
    assert lines[0].count("|") == len(HEADERS) + 1
    assert len(lines) == 2 + sum(len(c["runs"]) for c in document["cases"].values())


def test_loading_a_prefix_costs_far_less_than_recomputing_it() -> None:
    cost = cost_model(get_profile("llava-onevision-7b-a40"), 2048)
    # 16 x 57,344 B over 25 GB/s vs 16 x 200 us of prefill.
    assert cost["block_load_us"] == pytest.approx(36.7, abs=0.1)
    assert cost["block_recompute_us"] == pytest.approx(3200)
    assert cost["recompute_over_load"] > 50


def test_working_set_counts_each_tags_shared_full_blocks() -> None:
    from kvgate.bench.scenarios.offload import _Prompt

    def prompt(tag: str, ids: list[int]) -> _Prompt:
        return _Prompt(tag, ids, (1,), "length", (), 0)

    shared = list(range(40))
    prompts = [prompt("a", [*shared, 100]), prompt("a", [*shared, 200]),
               prompt("b", list(range(1000, 1020)))]
    # "a" shares 40 tokens = 2 full blocks of 16; "b" has one prompt: its own 1 full block.
    assert working_set_blocks(prompts, 16) == 3


def test_plots(tmp_path: Path) -> None:
    from kvgate.bench.scenarios import ScenarioOptions
    from kvgate.bench.scenarios.offload import run

    document = run(ScenarioOptions(quick=True, plots_dir=tmp_path))
    assert document["cases"]
    assert (tmp_path / "offload_latency_cdf.png").stat().st_size > 10_000
