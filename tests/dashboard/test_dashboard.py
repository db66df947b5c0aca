"""The dashboard end to end: `npm run build`, `npm run start` against a real `kvgate run`, and
a real Chromium reading the benchmarks, docs and live-operations pages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.nextjs import (
    RunningDashboard,
    browse,
    browse_command,
    ensure_built,
    parse_browse,
    run_dashboard,
)
from tests.support.processes import RunningGateway, free_port, run_gateway

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
DEMO_DEPLOYMENTS = {"mock-a/mock-small", "mock-b/mock-small"}

# The first test pays for `npm ci` and `next build` when CI has not done them already.
pytestmark = pytest.mark.timeout(900)

# Four different prompts, then one deterministic prompt twice: the second is an exact-cache
# hit, answered without a deployment. So: 6 requests with status 200, 5 dispatched to the two
# round-robin deployments, cache lookups 1 exact + 1 miss.
VARIED_PROMPTS = 4
REQUESTS_SENT = VARIED_PROMPTS + 2
DISPATCHED = VARIED_PROMPTS + 1

TENANT_CONFIG = """
server:
  admin_key: dashboard-admin-key
providers:
  mock-a: {type: mock, ttft_ms: 1, tokens_per_s: 0}
models:
  - name: kv-demo
    routing: {strategy: prefix_kv_aware}
    deployments:
      - {provider: mock-a, model: mock-small, id: replica-1}
      - {provider: mock-a, model: mock-small, id: replica-2}
tenants:
  - name: team-a
    api_keys: ["team-a-key"]
    rate_limit: {rpm: 600, tpm: 200000}
    budget: {usd: 25.0, window: monthly}
"""


def chat(gateway: RunningGateway, content: str, *, key: str | None = None, model: str = "demo",
         **params: Any) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(gateway.base_url + "/chat/completions", headers=headers, timeout=10,
                          json={"model": model, "messages": [{"role": "user", "content": content}],
                                **params})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def built() -> None:
    ensure_built()


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway() as gw:
        for i in range(VARIED_PROMPTS):
            chat(gw, f"question number {i}")
        first = chat(gw, "the same question", temperature=0)
        second = chat(gw, "the same question", temperature=0)
        assert (first["kvgate"]["cache"], second["kvgate"]["cache"]) == ("miss", "exact")
        yield gw


@pytest.fixture(scope="module")
def dashboard(built: None, gateway: RunningGateway) -> Iterator[RunningDashboard]:
    with run_dashboard(gateway.url) as running:
        yield running


@pytest.fixture(scope="module")
def offline_dashboard(built: None, tmp_path_factory: pytest.TempPathFactory,
                      ) -> Iterator[RunningDashboard]:
    """No gateway behind KVGATE_URL (a closed port) and only routing.json among the results."""
    results = tmp_path_factory.mktemp("results")
    shutil.copy(RESULTS / "routing.json", results / "routing.json")
    with run_dashboard(f"http://127.0.0.1:{free_port()}", results_dir=results) as running:
        yield running


@pytest.fixture(scope="module")
def tenant_gateway() -> Iterator[RunningGateway]:
    """Admin key and a tenant configured; prefix_kv_aware so routing decisions are counted."""
    with run_gateway(TENANT_CONFIG) as gw:
        prompt = "a long shared system prompt " * 40
        for _ in range(3):
            chat(gw, prompt, key="team-a-key", model="kv-demo")
        yield gw


# -- benchmarks -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def benchmarks_page(dashboard: RunningDashboard) -> dict[str, Any]:
    return browse(dashboard.url, "benchmarks")


def section(page: dict[str, Any], file: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in page["sections"] if s["file"] == file)
    return found


def chart(sect: dict[str, Any], chart_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in sect["charts"] if c["id"] == chart_id)
    return found


def bar(chart_found: dict[str, Any], category: str, series: str) -> dict[str, Any]:
    found: dict[str, Any] = next(b for b in chart_found["bars"]
                                 if (b["category"], b["series"]) == (category, series))
    return found


def test_benchmarks_page_charts_routing_strategies_with_the_json_values(
        benchmarks_page: dict[str, Any]) -> None:
    routing = json.loads((RESULTS / "routing.json").read_text())
    sect = section(benchmarks_page, "routing.json")
    assert sect["status"] == "ok"
    assert sect["source"] == "simulator"
    for case, data in routing["cases"].items():
        strategies = list(data["strategies"])
        assert {"round_robin", "prefix_kv_aware"} <= set(strategies)
        ttft = chart(sect, f"routing-{case}-ttft")
        assert ttft["hasSvg"]
        assert ttft["categories"] == strategies
        hit = chart(sect, f"routing-{case}-hit")
        for strategy in strategies:
            p95 = data["strategies"][strategy]["ttft_ms"]["p95"]
            assert bar(ttft, strategy, "p95")["value"] == p95
            rate = data["strategies"][strategy]["replica_hit_rate"]
            shown = bar(hit, strategy, "fleet")
            assert shown["value"] == rate
            assert shown["label"] == f"{rate * 100:.1f}%"
        # Bars are drawn to scale: the slower strategy's bar is the longer one.
        rr = bar(ttft, "round_robin", "p95")
        kv = bar(ttft, "prefix_kv_aware", "p95")
        assert (rr["width"] > kv["width"]) == (rr["value"] > kv["value"])
    assert benchmarks_page["pageErrors"] == []
    assert benchmarks_page["failedRequests"] == []


def test_every_result_file_gets_charts_labelled_with_their_source(
        benchmarks_page: dict[str, Any]) -> None:
    sources = {"routing.json": "simulator", "precise.json": "simulator",
               "realvllm.json": "real vLLM (CPU)", "gateway_overhead.json": "measured here",
               "offload.json": "simulator"}
    by_file = {s["file"]: s for s in benchmarks_page["sections"]}
    assert set(sources) <= set(by_file)
    for file, sect in by_file.items():
        if (RESULTS / file).exists():
            assert sect["status"] == "ok", file
            assert sect["charts"] and all(c["hasSvg"] and c["bars"] for c in sect["charts"]), file
        else:
            assert sect["status"] == "missing" and "Not run yet" in sect["notRun"], file
        if file in sources:
            assert sect["source"] == sources[file], file


def test_realvllm_and_overhead_charts_show_the_json_values(
        benchmarks_page: dict[str, Any]) -> None:
    realvllm = json.loads((RESULTS / "realvllm.json").read_text())
    sect = section(benchmarks_page, "realvllm.json")
    for case, data in realvllm["cases"].items():
        hit = chart(sect, f"realvllm-{case}-hit")
        rps = chart(sect, f"realvllm-{case}-rps")
        assert hit["categories"] == list(data["comparison"])
        for router, row in data["comparison"].items():
            assert bar(hit, router, "hit rate")["value"] == row["prefix_cache_hit_rate"]
            assert bar(rps, router, "req/s")["value"] == row["requests_per_s"]
    overhead = json.loads((RESULTS / "gateway_overhead.json").read_text())
    added = chart(section(benchmarks_page, "gateway_overhead.json"), "overhead-added")
    blocking = overhead["concurrency_1_blocking_ms"]
    assert bar(added, "blocking", "added p50")["value"] == blocking["added_p50"]
    assert bar(added, "blocking", "added p99")["value"] == blocking["added_p99"]


def test_a_missing_result_file_says_not_run_yet(offline_dashboard: RunningDashboard) -> None:
    page = browse(offline_dashboard.url, "benchmarks")
    by_file = {s["file"]: s for s in page["sections"]}
    assert by_file["routing.json"]["status"] == "ok"
    assert by_file["routing.json"]["charts"]
    missing = by_file["realvllm.json"]
    assert missing["status"] == "missing"
    assert missing["charts"] == []
    assert "Not run yet" in missing["notRun"] and "realvllm.json" in missing["notRun"]
    assert page["pageErrors"] == []


def test_npm_run_dev_serves_the_same_pages(built: None, gateway: RunningGateway) -> None:
    """SPEC 9's command: `npm run dev` (default port 3000; a free one here)."""
    with run_dashboard(gateway.url, script="dev") as running:
        page = browse(running.url, "benchmarks")
        live = browse(running.url, "live", "--min-requests", str(REQUESTS_SENT))
    routing = section(page, "routing.json")
    assert routing["status"] == "ok" and routing["charts"][0]["hasSvg"]
    assert {d["id"] for d in live["deployments"]} == DEMO_DEPLOYMENTS
    assert page["pageErrors"] == [] and live["pageErrors"] == []


# -- docs -------------------------------------------------------------------------------------

def test_docs_tab_renders_the_readme_with_its_tables(dashboard: RunningDashboard) -> None:
    readme = (REPO / "README.md").read_text()
    first_heading = next(line[2:].strip() for line in readme.splitlines()
                         if line.startswith("# "))
    first_table_head = next(line for line in readme.splitlines() if line.startswith("|"))
    page = browse(dashboard.url, "docs")
    assert page["doc"] == "README.md"
    assert page["firstHeading"] == first_heading
    assert page["tables"] >= 1 and page["tableVisible"]
    assert page["firstTableHeader"] == [c.strip() for c in first_table_head.strip("|").split("|")]
    assert page["firstTableRows"] >= 1
    docs = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert set(page["navLinks"]) == {"README.md"} | docs
    assert page["pageErrors"] == []


def test_every_doc_renders_and_its_doc_links_and_images_resolve(
        dashboard: RunningDashboard) -> None:
    names = ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))]
    checked: set[str] = set()
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        for name in names:
            response = client.get(f"/docs/{name}")
            assert response.status_code == 200, name
            html = response.text
            source = (REPO / ("README.md" if name == "README.md" else f"docs/{name}")).read_text()
            if "\n|---" in source or "\n| ---" in source:
                assert "<table>" in html, name
            targets = re.findall(r'href="(/docs/[^"#]+)', html)
            targets += re.findall(r'<img src="([^"]+)"', html)
            for target in set(targets) - checked:
                assert client.get(target).status_code == 200, (name, target)
                checked.add(target)
        assert client.get("/docs/NOT_A_DOC.md").status_code == 404
        assert client.get("/repo-file/pyproject.toml").status_code == 200
        for outside in ("/repo-file/..%2F..%2Fetc%2Fpasswd", "/repo-file/.git/config"):
            assert client.get(outside).status_code == 404, outside
    assert any(t.startswith("/repo-file/") for t in checked), "no image found in the docs"


# -- live operations --------------------------------------------------------------------------

def test_live_page_shows_the_demo_deployments_and_the_requests_sent(
        dashboard: RunningDashboard) -> None:
    page = browse(dashboard.url, "live", "--min-requests", str(REQUESTS_SENT))
    assert page["state"] == "connected"
    assert page["requestsTotal"] == REQUESTS_SENT
    assert page["requestsByStatus"] == {"200": REQUESTS_SENT}
    assert page["cacheHitRatio"] == "50.0%"
    assert [(m["name"], m["strategy"]) for m in page["models"]] == [("demo", "round_robin")]
    rows = {d["id"]: d for d in page["deployments"] if d["model"] == "demo"}
    assert set(rows) == DEMO_DEPLOYMENTS
    counts = sorted(d["requestsTotal"] for d in rows.values())
    assert sum(counts) == DISPATCHED
    assert counts == [DISPATCHED // 2, DISPATCHED - DISPATCHED // 2]
    assert all(d["failuresTotal"] == 0 and d["circuit"] == "closed" for d in rows.values())
    assert "No tenants configured" in page["tenants"]
    assert page["pageErrors"] == []
    assert page["failedRequests"] == []


def test_live_page_computes_request_rates_from_successive_polls(
        dashboard: RunningDashboard, gateway: RunningGateway) -> None:
    before = httpx.get(gateway.url + "/admin/stats", timeout=5).json()
    browser = subprocess.Popen(
        browse_command(dashboard.url, "live", "--min-requests", str(REQUESTS_SENT + 1),
                       "--positive-rate"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = 0
    try:
        deadline = time.monotonic() + 60
        while browser.poll() is None and time.monotonic() < deadline:
            chat(gateway, f"traffic {sent}")
            sent += 1
            time.sleep(0.05)
        stdout, stderr = browser.communicate(timeout=60)
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait()
    page = parse_browse(browser.returncode, stdout, stderr)
    assert sent > 0
    assert page["requestRateValue"] > 0
    assert page["requestsTotal"] > REQUESTS_SENT
    dispatched_before = sum(d["requests_total"] for d in before["models"][0]["deployments"])
    rows = [d for d in page["deployments"] if d["model"] == "demo"]
    assert sum(d["requestsTotal"] for d in rows) > dispatched_before
    assert any(d["rate"] is not None and d["rate"] > 0 for d in rows)


def test_live_page_says_so_when_the_gateway_is_unreachable(
        offline_dashboard: RunningDashboard) -> None:
    page = browse(offline_dashboard.url, "live-problem")
    assert page["problem"] == "unreachable"
    assert page["state"] == "unreachable"
    assert "Gateway unreachable" in page["text"]
    assert "ECONNREFUSED" in page["text"]
    assert page["pageErrors"] == []
    proxied = httpx.get(offline_dashboard.url + "/api/live", timeout=10)
    assert proxied.status_code == 502
    assert proxied.json()["ok"] is False


def test_live_page_uses_the_admin_key_and_shows_tenants_and_routing_decisions(
        built: None, tenant_gateway: RunningGateway) -> None:
    with run_dashboard(tenant_gateway.url, admin_key="dashboard-admin-key") as running:
        page = browse(running.url, "live", "--min-requests", "3")
    assert page["state"] == "connected"
    assert [(m["name"], m["strategy"]) for m in page["models"]] == [("kv-demo", "prefix_kv_aware")]
    mix = page["models"][0]["decisionMix"]
    assert "cold" in mix and "hit" in mix
    assert "team-a" in page["tenants"] and "600" in page["tenants"]
    with run_dashboard(tenant_gateway.url) as running:
        refused = browse(running.url, "live-problem")
    assert refused["problem"] == "unauthorized"
    assert "KVGATE_ADMIN_KEY" in refused["text"]
