"""`kvgate bench scenario overhead --quick --no-peers` (the plain case, then the long-prompt case:
KVGate over 64 deployments with round_robin and prefix_kv_aware), and a run whose peers all fail.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvgate.bench.peers import PeerUnavailable
from kvgate.bench.scenarios import (
    SCENARIOS,
    ScenarioOptions,
    overhead,
    overhead_long,
    overhead_targets,
)
from kvgate.cli import main
from kvgate.observability.metrics import Metrics


def _assert_measured(document: dict[str, Any], name: str) -> None:
    c1 = document["c1_blocking_ms"][name]
    assert c1["count"] == overhead.QUICK.requests_c1
    # Each block's opening request is timed apart and left out of the headline figures.
    blocks = overhead.QUICK.requests_c1 // overhead.QUICK.block
    with_openers = document["c1_blocking_with_openers_ms"][name]
    assert with_openers["count"] == overhead.QUICK.requests_c1 + blocks
    assert 0 < c1["p50"] <= c1["p99"]
    stream = document["c1_stream_ttft_ms"][name]
    assert stream["count"] == overhead.QUICK.stream_requests_c1
    for phase in ("c32_blocking", "c32_stream"):
        c32 = document[phase][name]
        assert c32["requests_per_s"] > 0 and c32["non_2xx"] == c32["socket_errors"] == 0, c32
        assert len(c32["rounds"]) == overhead.QUICK.rounds_c32
        assert c32["cpu_us_per_request"] is not None
    assert document["rss_mb"][name]["idle"] > 1.0


def _assert_long_prompt_case(document: dict[str, Any]) -> None:
    """Both KVGate arms measured end to end with no error or refusal; prefix_kv_aware sent
    every request after the first (cold) one where the shared system prompt was."""
    long = document["long_prompt"]
    arms = ["kvgate-round_robin", "kvgate-prefix_kv_aware"]
    assert list(long["comparison"]) == ["direct", *arms]
    assert long["failed"] == {} and long["deployments"] == 64
    assert long["prompt"]["approx_tokens"] == 8000
    for name in arms:
        assert long["targets"][name]["deployments"] == 64
        assert long["c1_blocking_ms"][name]["count"] == overhead.QUICK.requests_c1
        c32 = long["c32_blocking"][name]
        assert c32["requests_per_s"] > 0 and c32["non_2xx"] == c32["socket_errors"] == 0, c32
        assert c32["cpu_us_per_request"] is not None
        assert long["comparison"][name]["added_p50_ms"] is not None
    # Each timed block is opened by untimed requests (cold caches after the other hops).
    blocks = overhead.QUICK.requests_c1 // overhead.QUICK.block
    c1_requests = (overhead.QUICK.warmup + overhead.QUICK.requests_c1
                   + blocks * overhead.QUICK.block_warmup)
    rr = long["routing"]["kvgate-round_robin"]["c1"]
    assert rr["outcomes"] == {} and rr["attempts"] == c1_requests
    assert rr["deployments_used"] == 64
    kv = long["routing"]["kvgate-prefix_kv_aware"]["c1"]
    assert kv["outcomes"] == {"cold": 1, "hit": c1_requests - 1}, kv
    assert kv["deployments_used"] == 1
    assert sum(long["routing"]["kvgate-prefix_kv_aware"]["c32"]["outcomes"].values()) > 0
    for name in arms:
        for phase in ("c1", "c32"):
            counts = long["routing"][name][phase]
            assert counts["gc_passes"] >= 0 and counts["gc_us_per_attempt"] >= 0, counts
    difference = long["prefix_vs_round_robin"]
    assert difference["measured"] is True and difference["clean"] is True
    assert difference["cpu_ratio"] is not None and "added_p50_us" in difference


def test_gateway_counts_read_attempts_and_the_collectors_passes_from_metrics() -> None:
    metrics = Metrics()
    before = overhead_long.counts_from_metrics(metrics.render().decode())
    for deployment, attempts in (("a", 3), ("b", 1)):
        for _ in range(attempts):
            metrics.attempts_for("m", deployment, "ok").inc()
    metrics.routing_decisions_for("m", "a", "hit").inc(2)
    gc.disable()  # the passes below only
    try:
        started = overhead_long.counts_from_metrics(metrics.render().decode())
        for _ in range(3):
            gc.collect(0)
        after = overhead_long.counts_from_metrics(metrics.render().decode())
    finally:
        gc.enable()
    assert after["gc_passes"] - started["gc_passes"] == 3 and after["gc_s"] > started["gc_s"]
    delta = overhead_long.counts_delta(after, before)
    assert delta["outcomes"] == {"hit": 2} and delta["attempts"] == 4
    assert delta["deployments_used"] == 2
    assert delta["gc_passes"] >= 3
    assert delta["gc_us_per_attempt"] == round((after["gc_s"] - before["gc_s"]) / 4 * 1e6, 2)


def test_long_prompt_bodies_share_the_system_prompt_and_differ_in_the_user_turn() -> None:
    head, tail = overhead_long.long_body()
    first, second = (orjson.loads(head + str(n).encode() + tail) for n in (1, 2))
    assert first["messages"][0] == second["messages"][0]
    assert len(first["messages"][0]["content"]) == overhead_long.SYSTEM_CHARS
    assert first["messages"][1]["content"].startswith("Question 1: ")
    assert first["messages"][1] != second["messages"][1]
    assert b"]]" not in head + tail  # wrk's Lua long brackets carry it verbatim


def test_quick_without_peers_measures_direct_and_kvgate(tmp_path: Path) -> None:
    assert "overhead" in SCENARIOS
    out = tmp_path / "overhead.json"
    assert main(["bench", "scenario", "overhead", "--quick", "--no-peers", "--quiet",
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["scenario"] == "overhead" and document["quick"] is True
    assert document["peers"] is False
    assert document["command"].endswith("--quick --no-peers")
    assert list(document["targets"]) == ["direct", "kvgate"]
    assert document["unavailable"] == {} and document["failed"] == {}
    for name in ("direct", "kvgate"):
        _assert_measured(document, name)
    kvgate = document["c1_blocking_ms"]["kvgate"]
    assert "added_p50" in kvgate and "added_p99" in kvgate
    assert "added_p50" not in document["c1_blocking_ms"]["direct"]
    row = document["comparison"]["kvgate"]
    assert set(row) >= {"added_p50_ms", "added_p99_ms", "stream_ttft_p50_ms",
                        "c32_requests_per_s", "c32_stream_requests_per_s",
                        "cpu_us_per_request"}
    assert document["load_generator"]
    _assert_long_prompt_case(document)


def test_peers_that_cannot_install_are_recorded_and_the_run_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_package(executable: str, package: str, **_: Any) -> tuple[str, float]:
        raise PeerUnavailable(f"apt-get install -y {package} exited with 100: no network")

    def no_venv(self: Any, package: Any) -> Any:
        raise PeerUnavailable(f"{package.name}: pip install {package.requirement} exited with 1")

    monkeypatch.setattr(overhead, "ensure_debian_package", no_package)  # wrk
    monkeypatch.setattr(overhead_targets, "ensure_debian_package", no_package)  # nginx
    monkeypatch.setattr(overhead_targets.PeerInstaller, "ensure", no_venv)
    document = overhead.run(ScenarioOptions(quick=True, peers=True))
    assert document["unavailable"] == {
        "nginx": "apt-get install -y nginx exited with 100: no network",
        "litellm": "litellm: pip install litellm[proxy]==1.81.13 exited with 1",
        "vllm-router": "vllm-router: pip install vllm-router==0.1.17 exited with 1",
    }
    assert list(document["targets"]) == ["direct", "kvgate"]
    _assert_measured(document, "kvgate")
    assert list(document["long_prompt"]["comparison"]) == [
        "direct", "kvgate-round_robin", "kvgate-prefix_kv_aware"]


def test_target_is_refused() -> None:
    with pytest.raises(ValueError, match="does not take --target"):
        overhead.run(ScenarioOptions(quick=True, target="http://127.0.0.1:1"))
