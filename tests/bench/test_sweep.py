"""`kvgate bench scenario sweep`: sizing (working set, capacity, rates), every request served,
refusals counted, comparisons and targets, heat maps."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.sweep import QUICK_KV_RATIOS, QUICK_LOADS
from kvgate.bench.scenarios.sweep_report import compare, grids_markdown
from kvgate.bench.scenarios.sweep_run import ARMS, REPLICAS
from kvgate.bench.scenarios.sweep_sizing import (
    RequestShape,
    ShapeMeter,
    fleet_capacity_per_s,
    live_working_set_blocks,
)
from kvgate.bench.scenarios.sweep_workloads import (
    LLAMA,
    FanOuts,
    PoissonArrivals,
    Sessions,
    TraceTimes,
    sweep_workloads,
)
from kvgate.bench.virtual_fleet import Pacing, VirtualFleet
from kvgate.bench.virtual_loads import OpenLoop, Refusals, RequestBuilder
from kvgate.bench.workloads import (
    MultiRoundChatWorkload,
    SharedPrefixWorkload,
    TraceReplayWorkload,
    WorkloadOptions,
)
from kvgate.cli import main
from kvgate.routing import STRATEGIES
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.profiles import get_profile
from kvgate.sim.request import RequestStats


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out_dir = tmp_path_factory.mktemp("sweep")
    out = out_dir / "sweep.json"
    assert main(["bench", "scenario", "sweep", "--quick", "--quiet", "--out", str(out),
                 "--plots", str(out_dir / "img")]) == 0
    document: dict[str, Any] = json.loads(out.read_text())
    return document, out_dir / "img"


def test_registered() -> None:
    assert SCENARIOS["sweep"].module == "kvgate.bench.scenarios.sweep"


def test_every_cell_runs_every_registered_arm_and_serves_every_request(
        swept: tuple[dict[str, Any], Path]) -> None:
    document, _ = swept
    registered = [arm.name for arm in ARMS if arm.name in STRATEGIES]
    assert document["arms"] == registered
    assert document["arms_skipped"] == [a.name for a in ARMS if a.name not in STRATEGIES]
    workloads = [spec.name for spec in sweep_workloads(quick=True)]
    assert len(document["cells"]) == len(workloads) * len(QUICK_KV_RATIOS) * len(QUICK_LOADS)
    for cell in document["cells"]:
        assert list(cell["arms"]) == registered
        for figures in cell["arms"].values():
            assert figures["offered"] > 0
            assert figures["finished"] == figures["offered"], cell["workload"]
            assert figures["refused"] == {} and figures["lost"] == 0
            assert figures["ttft_ms"]["count"] == figures["offered"]
            assert figures["goodput_per_s"] > 0
            assert 0 <= figures["hit_rate"] <= 1
            assert sum(figures["per_replica_requests"]) == figures["offered"]


def test_cells_are_sized_to_their_regime(swept: tuple[dict[str, Any], Path]) -> None:
    document, _ = swept
    for cell in document["cells"]:
        regime = cell["regime"]
        usable = regime["kv_blocks"] - 1  # block 0 is the null block
        assert usable == pytest.approx(
            regime["kv_ratio_target"] * regime["working_set_blocks"], abs=1)
        assert regime["kv_ratio"] == pytest.approx(regime["kv_ratio_target"], rel=0.02)
        assert regime["rate_per_s"] == pytest.approx(
            regime["load_target"] * regime["capacity_per_s"], rel=1e-3)
        if cell["workload"] != "chat":  # open loop: the arrivals' own rate
            for figures in cell["arms"].values():
                assert figures["offered_per_s"] == pytest.approx(regime["rate_per_s"], rel=0.3)


def test_targets_and_heat_maps(swept: tuple[dict[str, Any], Path]) -> None:
    document, plots = swept
    new_arms = [a.name for a in ARMS if a.role == "new" and a.name in STRATEGIES]
    assert len(document["comparisons"]) == len(document["summary"]) * len(new_arms)
    for row in document["comparisons"]:
        assert row["checks"]["no_refusals"] is True
        partitioned = row["kv_ratio"] < 1 <= row["kv_ratio"] * REPLICAS
        assert ("vs_round_robin" in row["checks"]) is partitioned
    assert set(document["targets"]) == {"all_met", "per_check", "failed"}
    assert len(document["routing_sources_sha256"]) == 64
    for spec in sweep_workloads(quick=True):
        png = plots / f"sweep_{spec.name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_grids_and_the_recorded_command(swept: tuple[dict[str, Any], Path]) -> None:
    document, _ = swept
    assert document["command"].startswith("kvgate bench scenario sweep --quick --seed 0 ")
    grids = grids_markdown(document).split("\n\n")
    workloads = [spec.name for spec in sweep_workloads(quick=True)]
    assert [grid.split("**")[1] for grid in grids if grid.startswith("**")] == workloads
    first = next(c for c in document["comparisons"] if c["workload"] == workloads[0])
    rows = [line for line in grids[1].splitlines() if line.startswith(f"| {first['kv_ratio']:g} |")]
    assert rows and rows[0].split(" | ")[1].startswith(f"{first['ttft_p95_ratio']:.2f} / ")


def _shape(blocks: tuple[bytes, ...]) -> RequestShape:
    return RequestShape(prompt_tokens=16 * len(blocks), output_tokens=1, image_tokens=0,
                        blocks=blocks, cold_ttft_s=0.1, cold_e2e_s=0.1, engine_s=0.2,
                        frontend_s=0.01)


def test_working_set_counts_reused_blocks_while_live() -> None:
    # a, b are reused; c and d appear once. At t=0 a, b are live (first use), at t=1 a, b
    # (b's last use), at t=2 only a.
    shapes = [_shape((b"a", b"b", b"c")), _shape((b"a", b"b", b"d")), _shape((b"a",))]
    assert live_working_set_blocks(shapes, [0.0, 1.0, 2.0]) == pytest.approx(5 / 3)
    # A block used once is never live, however many blocks there are.
    assert live_working_set_blocks([_shape((b"x",)), _shape((b"y",))], [0.0, 1.0]) == 0


def test_capacity_is_the_cost_models_marginal_cost() -> None:
    profile = get_profile(LLAMA)
    builder = RequestBuilder(profile)
    body = SharedPrefixWorkload(num_groups=1, system_prompt_tokens=3000, question_tokens=8,
                                output_tokens=5).build(
        WorkloadOptions(model=builder.model, num_requests=1, ignore_eos=True))[0].body
    shape = ShapeMeter(builder).shape(body, "r0")
    prompt, decodes = shape.prompt_tokens, shape.output_tokens - 1
    chunks = math.ceil(prompt / profile.max_num_batched_tokens)
    expected = ((prompt + decodes) * profile.compute_s_per_token
                + prompt * (prompt + 1) / 2 * profile.attn_s_per_token_pair
                + sum(prompt + k for k in range(1, decodes + 1)) * profile.kv_read_s_per_token
                + (chunks + decodes) * profile.per_seq_overhead_s)
    assert shape.engine_s == pytest.approx(expected, rel=1e-9)
    assert shape.cold_ttft_s > profile.frontend_s + prompt * profile.compute_s_per_token
    assert fleet_capacity_per_s([shape], 4) == pytest.approx(4 / shape.engine_s)


def _requests(workload: Any, count: int | None = None) -> list[BenchRequest]:
    options = WorkloadOptions(model="m", num_requests=count, ignore_eos=True)
    built: list[BenchRequest] = workload.build(options)
    return built


@pytest.mark.parametrize("schedule", [PoissonArrivals(), FanOuts(size=4), TraceTimes()])
def test_open_loop_arrivals_run_at_the_target_rate(schedule: Any) -> None:
    workload = (TraceReplayWorkload(synthetic_requests=2000) if isinstance(schedule, TraceTimes)
                else SharedPrefixWorkload(num_groups=100, prompts_per_group=40,
                                          system_prompt_tokens=16, question_tokens=4))
    requests = _requests(workload)
    shapes = [_shape(()) for _ in requests]
    arrivals = sorted(schedule.planned_arrivals_s(requests, shapes, 40.0, 3))
    # Poisson: within about 2 standard deviations of the estimate (1,000 fan-outs).
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) == pytest.approx(40.0, rel=0.07)


def test_fan_outs_send_one_prefix_together() -> None:
    requests = _requests(SharedPrefixWorkload(num_groups=5, prompts_per_group=8,
                                              system_prompt_tokens=16, question_tokens=4))
    fan_outs = FanOuts(size=4).fan_outs(requests)
    assert sorted(i for members in fan_outs for i in members) == list(range(len(requests)))
    assert all(len(m) == 4 and len({requests[i].tag for i in m}) == 1 for m in fan_outs)
    arrivals = FanOuts(size=4, gap_s=0.01).planned_arrivals_s(
        requests, [_shape(())] * len(requests), 10.0, 0)
    for members in fan_outs:
        assert [arrivals[i] - arrivals[members[0]] for i in members] == pytest.approx(
            [0.0, 0.01, 0.02, 0.03])


def test_chat_users_arrive_at_the_target_over_turns() -> None:
    requests = _requests(MultiRoundChatWorkload(num_users=2000, num_rounds=4,
                                                system_prompt_tokens=8, user_history_tokens=8,
                                                question_tokens=2, answer_tokens=2))
    shapes = [_shape(()) for _ in requests]
    sessions = Sessions(mean_think_s=1.0, min_think_s=0.1)
    planned = sessions.planned_arrivals_s(requests, shapes, 40.0, 0)
    firsts = sorted(planned[i] for i in range(2000))  # round 1: every user's first turn
    assert (len(firsts) - 1) / (firsts[-1] - firsts[0]) == pytest.approx(10.0, rel=0.05)
    # The next turn is planned a cold end-to-end time and the mean think time later.
    assert planned[2000] - planned[0] == pytest.approx(0.1 + 0.1 + 1.0)


def test_a_request_no_engine_can_run_is_counted_as_refused() -> None:
    profile = get_profile(LLAMA)
    builder = RequestBuilder(profile)
    fits, too_long = (SharedPrefixWorkload(num_groups=1, system_prompt_tokens=tokens,
                                           question_tokens=4, output_tokens=4).build(
        WorkloadOptions(model=builder.model, num_requests=1, ignore_eos=True))[0].body
        for tokens in (40, 4000))
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=64)) for _ in range(2)]
    fleet = VirtualFleet(engines, "round_robin", model=builder.model)
    refusals = Refusals()
    finished: list[RequestStats] = []
    source = OpenLoop([fits, too_long, fits], [0.0, 0.1, 0.2], builder, finished.append,
                      refusals)
    asyncio.run(fleet.drive(source, Pacing()))
    assert refusals.by_kind == {"RequestRejected": 1}
    assert [s.request_id for s in finished] == ["r0", "r2"]
    assert fleet.requests_per_replica == [1, 1]  # the refused one was never routed


def test_compare_checks_each_target() -> None:
    roles = {"round_robin": "baseline", "least_busy": "baseline",
             "prefix_kv_aware_v1": "kvgate_v1", "prefix_kv_aware": "new"}

    def arm(p95: float, goodput: float, refused: int = 0) -> dict[str, Any]:
        return {"ttft_p95_ms": p95, "goodput_per_s": goodput, "refused": refused, "lost": 0}

    row = {"kv_ratio": 0.5, "load": 0.6, "arms": {
        "round_robin": arm(1000, 5), "least_busy": arm(700, 6),
        "prefix_kv_aware_v1": arm(400, 9), "prefix_kv_aware": arm(410, 8.4)}}
    (result,) = compare(row, roles, replicas=4)
    assert result["best_ttft_arm"] == "prefix_kv_aware_v1"
    assert result["ttft_p95_ratio"] == pytest.approx(1.025)
    assert result["goodput_ratio"] == pytest.approx(8.4 / 9, abs=1e-4)
    assert result["checks"] == {"ttft_p95": True, "goodput": False, "no_refusals": True,
                                "vs_round_robin": True, "vs_best_baseline": True}
    row["arms"]["least_busy"] = arm(500, 6, refused=1)
    row["kv_ratio"] = 2.0
    (result,) = compare(row, roles, replicas=4)
    assert result["checks"] == {"ttft_p95": True, "goodput": False, "no_refusals": False}


def test_quick_workloads_fit_one_minute_of_requests() -> None:
    for spec in sweep_workloads(quick=True):
        assert len(spec.build(0)) <= 64
        assert orjson.loads(spec.build(0)[0].body)["ignore_eos"] is True


def test_a_trace_of_ones_own_is_swept_in_place_of_the_workloads(tmp_path: Path) -> None:
    from kvgate.bench.trace import dump_trace, synthesize_trace

    trace = tmp_path / "mine.jsonl"
    entries = synthesize_trace(60, seed=3)
    trace.write_text(dump_trace(entries))
    out = tmp_path / "swept.json"
    assert main(["bench", "scenario", "sweep", "--quick", "--quiet", "--trace", str(trace),
                 "--trace-window", "10:25", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert list(document["workloads"]) == ["trace_file"]
    assert document["workloads"]["trace_file"]["parameters"]["first_entry"] == 10
    assert document["command"].endswith(f"--trace {trace} --trace-window 10:25 --out OUT.json")
    assert len(document["cells"]) == len(QUICK_KV_RATIOS) * len(QUICK_LOADS)
    for cell in document["cells"]:
        for arm in cell["arms"].values():
            assert arm["offered"] == arm["finished"] == 25
            assert arm["lost"] == 0 and not sum(arm["refused"].values())
    # The window is entries 10-34, in the trace's order and with its gaps.
    built = TraceReplayWorkload(path=str(trace), first_entry=10, max_entries=25).build(
        WorkloadOptions(model="m", seed=0))
    assert [r.max_output_tokens for r in built] == [
        max(1, e.output_length) for e in entries[10:35]]
    assert built[0].at_s == entries[10].timestamp_ms / 1000


def test_a_trace_window_past_its_end_or_malformed_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvgate.bench.trace import dump_trace, synthesize_trace

    trace = tmp_path / "mine.jsonl"
    trace.write_text(dump_trace(synthesize_trace(20, seed=1)))
    assert main(["bench", "scenario", "sweep", "--quick", "--quiet", "--trace", str(trace),
                 "--trace-window", "20:5"]) == 2
    assert "has 20 entries" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "scenario", "sweep", "--quick", "--trace", str(trace),
              "--trace-window", "5"])
    assert main(["bench", "scenario", "images-seeds", "--quick", "--quiet", "--trace",
                 str(trace)]) == 2
    assert "--trace is the sweep's" in capsys.readouterr().err
    with pytest.raises(ValueError, match="first_entry"):
        TraceReplayWorkload(path=str(trace), first_entry=-1)
