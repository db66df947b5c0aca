"""A real Prometheus (the `prometheus` binary, which CI installs) scraping a real gateway that
runs the stack's default config: the shipped prometheus.yml loads, the gateway's series arrive,
and every query on the KVGate dashboard runs against them."""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from kvgate.bench.processes import stop_process
from tests.deploy.stack import (
    DEPLOY,
    PROMETHEUS_FILE,
    dashboard_panels,
    load_dashboard,
    runnable_expr,
)
from tests.support.processes import free_port, run_gateway, wait_http

#: Queries over series this test's traffic does not create (no tenants, no cut streams, no
#: 5xx left after failover, mock providers report no cached tokens, no vLLM): they must run,
#: and may come back empty.
MAY_BE_EMPTY = ("kvgate_limit_rejections_total", "kvgate_tenant_spend_usd_total",
                "kvgate_stream_resumes_total", 'status=~"5.."', 'kind="cached"', "vllm:")


def require_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (apt-get install prometheus; .ci/run)")
    return binary


def test_promtool_accepts_the_shipped_config() -> None:
    require_prometheus()
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with the prometheus package"
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_FILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def local_config(gateway: str, prometheus: str) -> dict[str, Any]:
    """The shipped prometheus.yml with its targets pointed at this test's processes."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(PROMETHEUS_FILE.read_text()))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["kvgate"]["static_configs"] = [{"targets": [gateway], "labels": {"profile": "default"}}]
    # No vLLM here: a closed port, so the vllm job exists and its target is down.
    jobs["vllm"]["static_configs"] = [{"targets": [f"127.0.0.1:{free_port()}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [prometheus]}]
    return config


@contextlib.contextmanager
def run_prometheus(config: dict[str, Any], port: int) -> Iterator[str]:
    binary = require_prometheus()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        log = (Path(tmp) / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(url + "/-/ready", timeout_s=30, process=process)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n{(Path(tmp) / 'prometheus.log').read_text()}") from exc
            yield url
        finally:
            stop_process(process)
            log.close()


def query(prometheus: str, expr: str) -> dict[str, Any]:
    response = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    return body


def wait_for(prometheus: str, expr: str, predicate: Any, timeout_s: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = query(prometheus, expr)
        result = body.get("data", {}).get("result", [])
        if body["status"] == "success" and predicate(result):
            return list(result)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expr}: {body}")
        time.sleep(0.25)


def send_traffic(base_url: str) -> int:
    """Requests that touch every gateway series the dashboard reads; returns the count."""
    shared = "You are a careful assistant for a KV-cache aware gateway. " * 40
    with httpx.Client(base_url=base_url, timeout=30) as client:
        def chat(content: str, **extra: Any) -> httpx.Response:
            body = {"model": "demo", "messages": [{"role": "user", "content": content}], **extra}
            return client.post("/chat/completions", json=body)

        sent = []
        for i in range(3):  # one long prefix: cold, then KV-affinity hits
            sent.append(chat(shared + f"Question {i}?", temperature=0.7))
        for i in range(2):  # streams: time to first token
            sent.append(chat(f"Stream {i}", stream=True,
                             stream_options={"include_usage": True}, temperature=0.7))
        for _ in range(2):  # deterministic twice: an exact-cache miss, then a hit
            sent.append(chat("What does a KV cache hold?", temperature=0))
        sent.append(client.post("/completions", json={"model": "demo", "prompt": "Hello",
                                                      "max_tokens": 8}))
        assert all(r.status_code == 200 for r in sent), [r.text for r in sent]
        unknown = client.post("/chat/completions", json={
            "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 404
        assert sent[-2].headers["x-kvgate-cache"] != "miss"
    return len(sent) + 1


def test_dashboard_queries_run_against_a_real_prometheus() -> None:
    config_yaml = (DEPLOY / "gateway" / "config.yaml").read_text()
    prometheus_port = free_port()
    with run_gateway(config_yaml) as gateway:
        target = gateway.url.removeprefix("http://")
        config = local_config(target, f"127.0.0.1:{prometheus_port}")
        with run_prometheus(config, prometheus_port) as prometheus:
            wait_for(prometheus, 'up{job="kvgate"} == 1', bool)
            # Two waves, each seen by a scrape: rate() then finds every series the traffic
            # touches grown between two samples inside its window.
            requests = 0
            for _wave in range(2):
                requests += send_traffic(gateway.base_url)
                wait_for(prometheus, "sum(kvgate_requests_total)",
                         lambda r, n=requests: bool(r) and float(r[0]["value"][1]) >= n)
            wait_for(prometheus, "sum(rate(kvgate_requests_total[1m])) > 0", bool)
            by_status = wait_for(prometheus, "sum by (status) (kvgate_requests_total)", bool)
            assert {s["metric"]["status"] for s in by_status} == {"200", "404"}

            # The dashboard's instance variable lists this gateway.
            (up,) = wait_for(prometheus, 'up{job="kvgate"}', bool)
            assert up["metric"]["instance"] == target

            failures, empty = [], []
            for panel in dashboard_panels(load_dashboard()):
                for t in panel["targets"]:
                    body = query(prometheus, runnable_expr(t["expr"]))
                    if body["status"] != "success":
                        failures.append((panel["title"], t["expr"], body.get("error")))
                    elif not body["data"]["result"] and not any(
                            m in t["expr"] for m in MAY_BE_EMPTY):
                        empty.append((panel["title"], t["expr"]))
            assert not failures, failures
            assert not empty, f"no data, though the traffic made these series: {empty}"
