"""`kvgate bench` end to end with tiny sizes, against a real `kvgate run`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvgate.bench.api import read_records
from kvgate.cli import build_parser, main
from tests.support.processes import RunningGateway, free_port, run_gateway


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway() as running:
        yield running


@pytest.mark.parametrize(("workload", "extra"), [
    ("shared_prefix", ["-W", "num_groups=2", "-W", "system_prompt_tokens=64",
                       "--concurrency", "4"]),
    ("multimodal", ["-W", "num_images=2", "-W", "resolutions=64x64", "--rate", "200",
                    "--poisson", "--no-stream"]),
    ("trace", ["--timestamps", "--speedup", "50", "-W", "max_input_tokens=256"]),
    ("chat", ["-W", "num_users=3", "-W", "system_prompt_tokens=30",
              "-W", "user_history_tokens=20", "--rate", "100"]),
])
def test_run_writes_summary_records_and_plots(gateway: RunningGateway, tmp_path: Path,
                                              workload: str, extra: list[str]) -> None:
    out = tmp_path / "result.json"
    code = main(["bench", "run", "--target", gateway.url, "--workload", workload,
                 "--requests", "12", "--out", str(out), "--quiet", *extra]
                + (["--plots", str(tmp_path)] if workload == "shared_prefix" else []))
    assert code == 0
    document = json.loads(out.read_text())
    summary = document["summary"]
    assert summary["requests"]["ok"] == 12, summary["requests"]
    assert document["workload"]["name"] == workload
    assert set(summary["deployments"]) == {"mock-a/mock-small", "mock-b/mock-small"}
    assert summary["tokens"]["output"] > 0
    assert summary["routing_affinity"] is None  # round_robin reports no prefix matches
    if "--no-stream" in extra:
        assert summary["ttft_ms"] is None
    else:
        assert summary["ttft_ms"]["p50"] >= 15.0  # the demo mock waits 20 ms
    assert len(read_records(document)) == 12
    if workload == "shared_prefix":
        assert (tmp_path / "shared_prefix_latency_cdf.png").stat().st_size > 10_000
        assert (tmp_path / "shared_prefix_replica_load.png").stat().st_size > 10_000


def test_demo_scenario_quick_starts_its_own_gateway(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    assert main(["bench", "scenario", "demo", "--quick", "--quiet", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["scenario"] == "demo"
    assert document["summary"]["requests"]["ok"] == document["summary"]["requests"]["sent"] > 0


def test_a_scenario_run_with_out_leaves_the_scenarios_own_result_file_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The overhead and peers scenarios keep benchmarks/results/*.json; an experiment's run
    # with --out must write only where it was told (a full run's file is committed).
    from kvgate.bench import scenarios
    from kvgate.bench.scenarios import ScenarioOptions

    seen: list[ScenarioOptions] = []

    def scenario(options: ScenarioOptions) -> dict[str, object]:
        seen.append(options)
        return {"scenario": "fake"}

    monkeypatch.setattr(scenarios, "load_scenario", lambda name: scenario)
    out = tmp_path / "experiment.json"
    assert main(["bench", "scenario", "overhead", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"scenario": "fake"}
    own = Path("benchmarks/results/overhead.json")
    assert seen[0].out == out and seen[0].own_result_path(own) is None
    assert main(["bench", "scenario", "overhead", "--quiet"]) == 0
    assert seen[1].own_result_path(own) == own  # a full run without --out: its own file
    assert ScenarioOptions(quick=True).own_result_path(own) is None


def test_bare_bench_is_the_demo_and_bad_input_exits_2(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert build_parser("bench").parse_args(["bench"]).bench_command is None
    assert main(["bench", "run", "--workload", "nope", "--quiet"]) == 2
    assert "unknown workload" in capsys.readouterr().err
    assert main(["bench", "scenario", "nope"]) == 2
    assert main(["bench", "run", "--target", f"http://127.0.0.1:{free_port()}", "--quiet"]) == 2
    assert "nothing is serving" in capsys.readouterr().err
    assert main(["bench", "list"]) == 0
    assert "shared_prefix" in capsys.readouterr().out


def test_make_trace_reproduces_the_checked_in_file(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    assert main(["bench", "make-trace", "--out", str(out)]) == 0
    checked_in = Path(__file__).resolve().parents[2] / "benchmarks/traces/mooncake_synthetic.jsonl"
    assert out.read_text() == checked_in.read_text()


def test_cli_module_imports_only_the_standard_library() -> None:
    code = ("import sys, kvgate.bench.cli; "
            "print([m for m in ('aiohttp', 'rich', 'matplotlib', 'orjson') if m in sys.modules])")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"
