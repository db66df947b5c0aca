"""Circuit breaking through a running gateway: open, cool down, probe, close; health checks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience.e2e import GatewayClient, chat_body, wait_until
from tests.support import processes
from tests.support.processes import RunningUpstream, free_port, run_gateway, run_upstream

COOLDOWN_S = 1.0


def received(upstream: RunningUpstream) -> int:
    return len(upstream.log()["received"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def flaky() -> Iterator[RunningUpstream]:
    with run_upstream() as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def healthy_again(flaky: RunningUpstream) -> Iterator[None]:
    flaky.control()
    yield
    flaky.control()


@pytest.fixture(scope="module")
def gateway(flaky: RunningUpstream) -> Iterator[GatewayClient]:
    # The flaky upstream is the cheapest, so `cost` sends every request there first while its
    # circuit lets it; the mock is the always-working fallback.
    config = f"""
providers:
  flaky: {{ type: openai_compatible, api_base: "{flaky.api_base}" }}
  mock: {{ type: mock }}
  dead1: {{ type: openai_compatible, api_base: "http://127.0.0.1:{free_port()}/v1" }}
  dead2: {{ type: openai_compatible, api_base: "http://127.0.0.1:{free_port()}/v1" }}
routing:
  strategy: cost
  health_check_interval_s: 0     # this module tests the passive path alone
  breaker: {{ consecutive_failures: 2, cooldown_s: {COOLDOWN_S}, min_requests: 1000 }}
cache: {{ exact: {{ enabled: false }} }}
models:
  - name: pair
    deployments:
      - {{ provider: flaky, model: m, id: flaky }}
      - {{ provider: mock, model: m, id: mock, cost_per_1k_input: 1.0 }}
  - name: doomed
    routing: {{ breaker: {{ consecutive_failures: 1, cooldown_s: 30 }} }}
    deployments:
      - {{ provider: dead1, model: m, id: dead1 }}
      - {{ provider: dead2, model: m, id: dead2 }}
"""
    with run_gateway(config) as running:
        client = GatewayClient(running)
        yield client
        client.close()


def served_by(gateway: GatewayClient, content: str) -> str:
    reply = gateway.post(chat_body("pair", content, max_tokens=2))
    assert reply.status_code == 200, reply.text
    return reply.headers["x-kvgate-deployment"]


def trip(gateway: GatewayClient, flaky: RunningUpstream) -> None:
    flaky.control(status=503)
    # Two consecutive failures open it; both requests are still answered, by the mock.
    assert [served_by(gateway, f"trip{i}") for i in range(2)] == ["mock", "mock"]
    circuit = gateway.circuit("pair", "flaky")
    assert circuit["state"] == "open" and 0 < circuit["cooldown_left_s"] <= COOLDOWN_S


def test_opens_cools_down_probes_and_closes(
    gateway: GatewayClient, flaky: RunningUpstream
) -> None:
    trip(gateway, flaky)
    sent = received(flaky)
    # Ejected: nothing reaches the flaky upstream during the cooldown.
    assert {served_by(gateway, f"ejected{i}") for i in range(5)} == {"mock"}
    assert received(flaky) == sent
    flaky.control()  # it recovers, silently
    wait_until(lambda: gateway.circuit("pair", "flaky")["state"] == "half_open",
               timeout_s=COOLDOWN_S + 1, what="half-open")
    assert served_by(gateway, "probe") == "flaky"  # the probe
    assert gateway.circuit("pair", "flaky")["state"] == "closed"
    assert {served_by(gateway, f"after{i}") for i in range(3)} == {"flaky"}
    assert gateway.metric(
        'kvgate_deployment_circuit_state{deployment="flaky",model="pair"}'
    ) == 0.0
    gateway.assert_idle()


def test_a_failed_probe_opens_the_circuit_again(
    gateway: GatewayClient, flaky: RunningUpstream
) -> None:
    trip(gateway, flaky)
    opened_before = gateway.circuit("pair", "flaky")["times_opened"]
    wait_until(lambda: gateway.circuit("pair", "flaky")["state"] == "half_open",
               timeout_s=COOLDOWN_S + 1, what="half-open")
    sent = received(flaky)
    assert served_by(gateway, "probe") == "mock"  # the probe failed over
    assert received(flaky) == sent + 1  # exactly one probe went through
    circuit = gateway.circuit("pair", "flaky")
    assert circuit["state"] == "open" and circuit["times_opened"] == opened_before + 1
    gateway.assert_idle()


def test_all_circuits_open_answers_503_fast_with_retry_after(gateway: GatewayClient) -> None:
    first = gateway.post(chat_body("doomed", "one"))
    assert first.status_code == 502  # both attempts refused; both circuits now open
    states = {d: r["circuit"]["state"] for d, r in gateway.deployments("doomed").items()}
    assert states == {"dead1": "open", "dead2": "open"}
    timings = []
    for index in range(5):
        started = time.perf_counter()
        reply = gateway.post(chat_body("doomed", f"again{index}"))
        timings.append(time.perf_counter() - started)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "no_healthy_deployment"
        assert 1 <= int(reply.headers["retry-after"]) <= 30
    # No upstream is contacted: a millisecond or two on loopback (bounds loose for busy CI).
    assert sorted(timings)[2] < 0.05 and max(timings) < 0.5
    assert gateway.deployments("doomed")["dead1"]["requests_total"] == 1
    ready = gateway.http.get("/readyz")
    assert ready.status_code == 503  # a model with no deployment to send to
    gateway.assert_idle()


def test_streams_are_ejected_and_probed_the_same_way(
    gateway: GatewayClient, flaky: RunningUpstream
) -> None:
    wait_until(lambda: gateway.circuit("pair", "flaky")["state"] != "open",
               timeout_s=COOLDOWN_S + 1, what="earlier test's cooldown")
    served_by(gateway, "close it")
    flaky.control(status=500)
    for index in range(2):
        events = gateway.stream(chat_body("pair", f"s{index}", max_tokens=2))
        assert events[-1] == "[DONE]"
    assert gateway.circuit("pair", "flaky")["state"] == "open"
    gateway.assert_idle()


@contextlib.contextmanager
def upstream_on(port: int) -> Iterator[RunningUpstream]:
    """The test upstream on a port of our choosing, so it can die and come back on it."""
    script = Path(processes.__file__).with_name("upstream_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http(url + "/v1/models", process=process)
        yield RunningUpstream(url, process)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_health_checks_bring_a_restarted_upstream_back_before_the_cooldown() -> None:
    port = free_port()
    config = f"""
providers:
  vllm: {{ type: openai_compatible, api_base: "http://127.0.0.1:{port}/v1" }}
  mock: {{ type: mock }}
routing:
  strategy: cost
  health_check_interval_s: 0.1
  breaker: {{ consecutive_failures: 1, cooldown_s: 600 }}
cache: {{ exact: {{ enabled: false }} }}
models:
  - name: pair
    deployments:
      - {{ provider: vllm, model: m, id: vllm }}
      - {{ provider: mock, model: m, id: mock, cost_per_1k_input: 1.0 }}
"""
    with run_gateway(config) as running:
        gateway = GatewayClient(running)
        with upstream_on(port):
            assert served_by(gateway, "up") == "vllm"
        # The upstream is gone: one refused attempt opens the circuit for 10 minutes, and
        # failing health checks keep it open (nothing is let through to it).
        assert served_by(gateway, "down") == "mock"
        time.sleep(0.5)
        assert gateway.circuit("pair", "vllm")["state"] == "open"
        assert served_by(gateway, "still down") == "mock"
        with upstream_on(port) as restarted:
            wait_until(lambda: gateway.circuit("pair", "vllm")["state"] == "half_open",
                       timeout_s=3, what="a passing health check")
            assert served_by(gateway, "probe") == "vllm"
            assert gateway.circuit("pair", "vllm")["state"] == "closed"
            assert len(restarted.log()["received"]) == 1  # type: ignore[arg-type]
        gateway.assert_idle()
        gateway.close()
