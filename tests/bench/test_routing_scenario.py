"""The routing scenario: its affinity measure, targets, and a --quick run."""

from __future__ import annotations

import json
from pathlib import Path

from kvgate.bench.request import RequestRecord
from kvgate.bench.scenarios.routing import STRATEGIES, affinity, modelled, prefix_settings
from kvgate.bench.scenarios.routing_report import check_targets, markdown_tables
from kvgate.cli import main


def record(index: int, tag: str, deployment: str, start_s: float, session: int = -1,
           error: str = "") -> RequestRecord:
    return RequestRecord(index, tag, session, start_s, start_s=start_s, end_s=start_s + 1.0,
                         ttft_s=0.5, deployment=deployment, error=error)


def test_affinity_counts_repeats_sent_where_the_prefix_was_last_served() -> None:
    records = [
        record(0, "a", "r0", 0.0), record(1, "b", "r1", 0.1),
        record(2, "a", "r0", 0.2),  # same replica as a's previous: affine
        record(3, "a", "r1", 0.3),  # moved: not affine
        record(4, "a", "r1", 0.4),  # same as the previous (r1): affine
        record(5, "b", "r0", 0.5, error="timeout"),  # failed requests are not counted
    ]
    assert affinity(records, "tag") == round(2 / 3, 4)
    assert affinity(records[:2], "tag") is None  # no repeats
    sessions = [record(0, "", "r0", 0.0, session=1), record(1, "", "r1", 0.1, session=1)]
    assert affinity(sessions, "session") == 0.0


def test_modelled_records_scale_every_time() -> None:
    [scaled] = modelled([record(0, "a", "r0", 2.0)], 4.0)
    assert (scaled.start_s, scaled.end_s, scaled.ttft_s, scaled.latency_s) == (8.0, 12.0, 2.0,
                                                                                4.0)


def test_prefix_settings_keep_modelled_time() -> None:
    assert prefix_settings(4.0) == {"engine_metrics_interval_s": 0.25, "ttl_s": 75.0}


def _figures(p95: float, rps: float, affinity_share: float, shares: list[float]
             ) -> dict[str, object]:
    return {"ttft_ms": {"p50": p95 / 2, "p95": p95, "p99": p95}, "requests_per_s": rps,
            "output_tokens_per_s": rps * 10, "affinity": affinity_share,
            "replica_hit_rate": 0.5, "errors": 0, "max_share": max(shares),
            "max_over_mean_load": max(shares) * len(shares),
            "replica_share": {f"replica-{i}": s for i, s in enumerate(shares)}}


def test_targets_follow_the_issue() -> None:
    document = {"cases": {
        "images": {"title": "t", "fleet": {"time_scale": 4}, "strategies": {
            "round_robin": _figures(2000, 1.0, 0.5, [0.5, 0.5]),
            "least_busy": _figures(1900, 1.0, 0.5, [0.5, 0.5]),
            "prefix_kv_aware": _figures(1000, 1.5, 0.99, [0.62, 0.38]),
        }},
        "chat": {"title": "t", "fleet": {"time_scale": 4}, "strategies": {
            "round_robin": _figures(900, 1.0, 0.25, [0.25] * 4),
            "least_busy": _figures(800, 1.0, 0.3, [0.25] * 4),
            "prefix_kv_aware": _figures(850, 1.2, 0.97, [0.3, 0.3, 0.2, 0.2]),
        }},
    }}
    met = {(t.case, t.name): t.met for t in check_targets(document["cases"])}
    assert met == {
        ("images", "ttft_p95_speedup"): True,  # 2.0x
        ("images", "throughput_gain"): True,
        ("images", "affinity"): True,
        ("images", "max_replica_share"): False,  # 62/38
        ("chat", "ttft_p95_vs_round_robin"): True,
        ("chat", "ttft_p95_vs_least_busy"): False,  # 850 ms vs 800 ms
        ("chat", "max_over_mean_load"): True,  # 1.2x
    }
    document["targets"] = [t.to_json() for t in check_targets(document["cases"])]
    table = markdown_tables(document)
    assert "| prefix_kv_aware | 500 | 1,000 |" in table
    assert "| images | prefix_kv_aware busiest replica's share | 0.620 | <= 0.6 | **no** |" in table


def test_quick_scenario_runs_every_strategy_on_both_fleets(tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    code = main(["bench", "scenario", "routing", "--quick", "--quiet", "--out", str(out),
                 "--plots", str(tmp_path)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["scenario"] == "routing" and document["quick"] is True
    for source in ("cases", "virtual"):
        assert set(document[source]) == {"images", "chat"}
        for name, section in document[source].items():
            assert list(section["strategies"]) == list(STRATEGIES)
            replicas = section["fleet"]["replicas"]
            offered = document["runs"][f"{name}/round_robin"]["summary"]["requests"]["offered"]
            for strategy, figures in section["strategies"].items():
                assert figures["errors"] == 0, (source, name, strategy, figures["error_kinds"])
                assert figures["requests"] == offered > 0
                assert len(figures["replica_share"]) == replicas
                assert abs(sum(figures["replica_share"].values()) - 1.0) < 0.01
                assert 0.0 <= figures["replica_hit_rate"] <= 1.0
                assert figures["ttft_ms"]["p95"] > 0
        images = document[source]["images"]["strategies"]
        # The smoke test's one claim about routing: prefix_kv_aware keeps images in place.
        assert images["prefix_kv_aware"]["affinity"] > images["round_robin"]["affinity"]
    for run in document["runs"].values():
        assert run["summary"]["requests"]["ok"] == run["summary"]["requests"]["sent"]
        assert "records" not in run
    for key in ("targets", "targets_virtual"):
        assert {t["name"] for t in document[key]} >= {"ttft_p95_speedup", "affinity",
                                                      "max_over_mean_load"}
    for case in ("images", "chat"):
        for kind in ("latency_cdf", "summary", "virtual_latency_cdf", "virtual_summary"):
            assert (tmp_path / f"routing_{case}_{kind}.png").stat().st_size > 10_000
