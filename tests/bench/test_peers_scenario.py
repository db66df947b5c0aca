"""`kvgate bench scenario peers --quick --no-peers`: KVGate's strategies on the sim fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvgate.bench.peers import PeerUnavailable
from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import SCENARIOS, ScenarioOptions, peers, peers_report
from kvgate.cli import main

KVGATE_LABELS = [r.label for r in peers.KVGATE_ROUTERS]


def _assert_runs(section: dict[str, Any], labels: list[str]) -> None:
    assert sorted(section["routers"]) == sorted(labels)
    requests = section["workload"]["requests"]
    assert section["rounds"] == peers.QUICK_ROUNDS
    for label in labels:
        numbers = section["routers"][label]
        assert numbers["requests"] == requests and numbers["errors"] == 0, numbers
        assert numbers["ttft_ms"]["p95"] >= numbers["ttft_ms"]["p50"] > 0
        assert numbers["requests_per_s"] > 0 and numbers["output_tokens_per_s"] > 0
        assert 0.0 <= numbers["replica_hit_rate"] <= 1.0
        assert len(numbers["per_round"]) == peers.QUICK_ROUNDS
        shares = numbers["per_round"][0]["replica_share"]
        assert len(shares) == section["fleet"]["replicas"]
        assert sum(shares) == pytest.approx(1.0, abs=0.01)
        assert numbers["max_share"] == max(shares)


@pytest.mark.timeout(600)  # 3 fleets and 9 gateways start; slow on a busy 2-core machine
def test_quick_without_peers_runs_every_case_through_kvgate(tmp_path: Path) -> None:
    assert "peers" in SCENARIOS
    out = tmp_path / "peers.json"
    assert main(["bench", "scenario", "peers", "--quick", "--no-peers", "--quiet",
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["scenario"] == "peers" and document["peers"] is False
    assert document["installs"] == {} and document["unavailable"] == {}
    assert list(document["cases"]) == ["images", "chat", "shared_prefix"]
    for name, section in document["cases"].items():
        _assert_runs(section, KVGATE_LABELS)
        row = document["comparison"][name]
        assert list(row) == KVGATE_LABELS
        assert set(row["kvgate/prefix_kv_aware"]) >= {"ttft_p95_ms", "requests_per_s",
                                                      "replica_hit_rate"}


def test_failed_peer_installs_are_recorded_and_kvgate_still_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_venv(self: Any, package: Any) -> Any:
        raise PeerUnavailable(f"{package.name}: pip install {package.requirement} exited with 1")

    monkeypatch.setattr(peers.PeerInstaller, "ensure", no_venv)
    first_case = peers.cases(True)[:1]
    monkeypatch.setattr(peers, "cases", lambda quick: first_case)
    monkeypatch.setattr(peers, "KVGATE_ROUTERS", peers.KVGATE_ROUTERS[-1:])
    document = peers.run(ScenarioOptions(quick=True, peers=True))
    assert set(document["unavailable"]) == {"sglang-router", "vllm-router"}
    assert document["unavailable"]["vllm-router"].endswith("vllm-router==0.1.17 exited with 1")
    assert list(document["comparison"]["images"]) == ["kvgate/prefix_kv_aware"]
    _assert_runs(document["cases"]["images"], ["kvgate/prefix_kv_aware"])


def test_requests_carry_their_user_key() -> None:
    keyed = peers.with_session_keys([BenchRequest(body=b'{"model":"m"}', stream=True,
                                                  tag="g1")])
    assert orjson.loads(keyed[0].body) == {"model": "m", "user": "g1"}
    assert keyed[0].headers == {"x-session-id": "g1"}


def test_medians_over_rounds_keep_every_round() -> None:
    def one(ttft_p95: float, hit: float, share: float) -> dict[str, Any]:
        return {"requests": 10, "errors": 0, "ttft_ms": {"p50": 1.0, "p95": ttft_p95,
                                                         "p99": ttft_p95},
                "latency_ms": None, "requests_per_s": 2.0, "output_tokens_per_s": 20.0,
                "replica_hit_rate": hit, "max_share": share}
    rounds = [one(300.0, 0.5, 1.0), one(100.0, 0.7, 0.5), one(200.0, 0.6, 0.5)]
    numbers = peers_report.median_figures(rounds)
    assert numbers["ttft_ms"]["p95"] == 200.0 and numbers["replica_hit_rate"] == 0.6
    assert numbers["max_share"] == 0.5 and numbers["latency_ms"]["p50"] is None
    assert numbers["per_round"] == rounds
