"""deploy/grafana: the provisioning files and the KVGate dashboard, checked against the
gateway's own metrics registry (kvgate.observability.metrics)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from kvgate.observability.families import CounterFamily, HistogramFamily
from kvgate.observability.metrics import Metrics
from tests.deploy.stack import (
    DASHBOARD_PROVIDER_FILE,
    DATASOURCE_FILE,
    DEPLOY,
    bind_mounts,
    dashboard_panels,
    load_compose,
    load_dashboard,
    runnable_expr,
)

DASHBOARD = load_dashboard()
PANELS = dashboard_panels(DASHBOARD)
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]

#: vLLM's engine metrics the dashboard may use (VLLM_FACTS.md, vLLM 0.33; the last is the
#: pre-0.10 name of kv_cache_usage_perc, kept as a fallback).
VLLM_METRICS = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_preemptions_total",
    "vllm:request_success_total", "vllm:gpu_cache_usage_perc",
    *(f"vllm:{h}_{suffix}" for h in ("time_to_first_token_seconds",
                                     "inter_token_latency_seconds", "e2e_request_latency_seconds",
                                     "request_queue_time_seconds", "request_prefill_time_seconds")
      for suffix in ("bucket", "sum", "count")),
}
#: Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "profile", "le"}
_METRIC = re.compile(r"\b(kvgate_\w+|vllm:\w+)")
_SELECTOR = re.compile(r"(kvgate_\w+|vllm:\w+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")


def gateway_series() -> dict[str, set[str]]:
    """Every series name the gateway exposes, with its label names, from one render of a
    fresh registry (counters gain _total, histograms _bucket/_sum/_count)."""
    metrics = Metrics()
    deployment = SimpleNamespace(id="d", stats=SimpleNamespace(in_flight=0))
    metrics.watch_deployments([("m", deployment)], lambda _d: 0)  # type: ignore[list-item]
    labels_of: dict[str, tuple[str, ...]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, CounterFamily | HistogramFamily):
            labels_of[metric.name.removesuffix("_total")] = metric.labelnames
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = set(sample.labels) | set(labels_of.get(family.name, ()))
            series.setdefault(sample.name, set()).update(labels - {"le"})
        if family.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series.setdefault(family.name + suffix, set(labels_of.get(family.name, ())))
        elif family.type == "counter":
            series.setdefault(family.name + "_total", set(labels_of.get(family.name, ())))
    # Created-timestamps are not meant for dashboards.
    return {name: labels for name, labels in series.items() if not name.endswith("_created")}


SERIES = gateway_series()


def test_provisioned_datasource_is_what_every_panel_queries() -> None:
    (datasource,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in PANELS:
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"] == expected


def test_dashboard_provider_loads_the_mounted_dashboard_directory() -> None:
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDER_FILE.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = load_compose()["services"]["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/kvgate.json"


def test_dashboard_schema_basics() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] == "KVGate"
    assert isinstance(DASHBOARD["schemaVersion"], int)
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] >= 1 and grid["y"] >= 0
    assert len(PANELS) >= 20
    for panel in PANELS:
        assert panel["type"] in {"timeseries", "stat", "state-timeline", "bargauge"}
        assert panel["title"] and panel["targets"], panel
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            runnable_expr(target["expr"])  # only variables Grafana defines


def test_rows_cover_the_gateway_and_the_vllm_engines() -> None:
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows[-1].startswith("vLLM")
    titles = " ".join(p["title"] for p in PANELS).lower()
    for topic in ("requests by status", "request duration", "time to first token",
                  "gateway overhead", "cache", "routing decisions", "in flight",
                  "circuit state", "tokens", "spend", "limit rejections", "tenant spend",
                  "prefix cache hit rate", "running and waiting", "kv cache usage"):
        assert topic in titles, topic


def test_every_kvgate_metric_referenced_exists_in_the_registry() -> None:
    referenced = {m for expr in EXPRS for m in _METRIC.findall(expr)}
    unknown = {m for m in referenced if m.startswith("kvgate_")} - set(SERIES)
    assert not unknown, f"not exposed by kvgate.observability.metrics: {sorted(unknown)}"
    unknown_vllm = {m for m in referenced if m.startswith("vllm:")} - VLLM_METRICS
    assert not unknown_vllm, sorted(unknown_vllm)


def test_every_gateway_metric_has_a_panel() -> None:
    families = {name.removesuffix("_total") for name in SERIES
                if not name.endswith(("_bucket", "_sum", "_count"))}
    families |= {name.removesuffix("_bucket") for name in SERIES if name.endswith("_bucket")}
    text = " ".join(EXPRS)
    missing = {f for f in families if f not in text}
    assert not missing, f"metrics without a panel: {sorted(missing)}"


@pytest.mark.parametrize("expr", EXPRS)
def test_labels_used_exist_on_the_metrics(expr: str) -> None:
    metrics = set(_METRIC.findall(expr))
    known: set[str] = set(TARGET_LABELS)
    for metric in metrics:
        known |= SERIES.get(metric, set())
    for metric, matchers in _SELECTOR.findall(expr):
        names = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
        allowed = TARGET_LABELS | SERIES.get(metric, set())
        if metric.startswith("vllm:"):
            continue  # vLLM's own labels (model_name, engine) are not checked here
        assert names <= allowed, f"{metric}: {names - allowed}"
    if all(m.startswith("kvgate_") for m in metrics):
        for group in _BY.findall(expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= known, f"by ({group}) in {expr}"


def test_value_mappings_name_the_circuit_states() -> None:
    (panel,) = [p for p in PANELS if "kvgate_deployment_circuit_state" in p["targets"][0]["expr"]]
    mapping: dict[str, Any] = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    # metrics.py: 0 closed, 1 half-open, 2 open.
    assert {k: v["text"] for k, v in mapping.items()} == {"0": "closed", "1": "half-open",
                                                         "2": "open"}
