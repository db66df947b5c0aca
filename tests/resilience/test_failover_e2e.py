"""Failover through a running gateway: dead, erroring, slow and picky upstreams on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.resilience.e2e import GatewayClient, chat_body, streamed_text
from tests.support.processes import (
    RunningUpstream,
    free_port,
    run_gateway,
    run_upstream,
)

REQUEST_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RunningUpstream]]:
    with run_upstream() as err, run_upstream() as ok, run_upstream() as picky, \
            run_upstream() as slow:
        err.control(status=500)
        picky.control(status=400)
        # Answers just after the gateway's deadline, so shutting it down does not wait long.
        slow.control(delay_s=REQUEST_TIMEOUT_S + 0.3)
        yield {"err": err, "ok": ok, "picky": picky, "slow": slow}


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, RunningUpstream]) -> Iterator[GatewayClient]:
    providers = "\n".join(
        f"  {name}: {{ type: openai_compatible, api_base: \"{up.api_base}\" }}"
        for name, up in upstreams.items()
    )
    config = f"""
server: {{ request_timeout_s: {REQUEST_TIMEOUT_S} }}
providers:
{providers}
  dead: {{ type: openai_compatible, api_base: "http://127.0.0.1:{free_port()}/v1" }}
routing:
  strategy: round_robin
  breaker: {{ enabled: false }}   # this module watches every attempt; breaking has its own
cache: {{ exact: {{ enabled: false }} }}
models:
  - name: trio
    deployments:
      - {{ provider: dead, model: m, id: dead }}
      - {{ provider: err, model: m, id: err }}
      - {{ provider: ok, model: m, id: ok }}
  - name: budget2
    routing: {{ max_attempts: 2 }}
    deployments:
      - {{ provider: dead, model: m, id: dead }}
      - {{ provider: err, model: m, id: err }}
      - {{ provider: ok, model: m, id: ok }}
  - name: picky
    routing: {{ strategy: cost }}
    deployments:
      - {{ provider: picky, model: m, id: picky }}
      - {{ provider: ok, model: m, id: ok, cost_per_1k_input: 1.0 }}
  - name: slow
    routing: {{ strategy: cost }}
    deployments:
      - {{ provider: slow, model: m, id: slow }}
      - {{ provider: ok, model: m, id: ok, cost_per_1k_input: 1.0 }}
"""
    with run_gateway(config) as running:
        client = GatewayClient(running)
        yield client
        client.close()


def received(upstream: RunningUpstream) -> int:
    return len(upstream.log()["received"])  # type: ignore[arg-type]


def test_every_request_lands_on_the_working_deployment(
    gateway: GatewayClient, upstreams: dict[str, RunningUpstream]
) -> None:
    err_before, ok_before = received(upstreams["err"]), received(upstreams["ok"])
    for index in range(6):
        reply = gateway.post(chat_body("trio", f"q{index}", max_tokens=3))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "alpha beta gamma"
        assert reply.headers["x-kvgate-deployment"] == "ok"
    for index in range(6):
        events = gateway.stream(chat_body("trio", f"s{index}", max_tokens=3))
        assert events[-1] == "[DONE]" and streamed_text(events) == "alpha beta gamma"
    rows = gateway.deployments("trio")
    # Round robin goes dead -> err -> ok for every request (the cursor is back at dead after
    # ok), and with breaking off every attempt is made: 12 refused, 12 answered 500.
    assert {d: (r["requests_total"], r["failures_total"]) for d, r in rows.items()} == {
        "dead": (12, 12), "err": (12, 12), "ok": (12, 0),
    }
    assert received(upstreams["err"]) - err_before == 12
    assert received(upstreams["ok"]) - ok_before == 12
    gateway.assert_idle()


def test_each_attempt_is_counted_in_metrics(gateway: GatewayClient) -> None:
    rows = gateway.deployments("trio")
    for deployment, outcome in (("dead", "retryable_error"), ("err", "retryable_error"),
                                ("ok", "ok")):
        count = gateway.metric(
            f'kvgate_upstream_attempts_total{{deployment="{deployment}",model="trio",'
            f'outcome="{outcome}"}}'
        )
        assert count == rows[deployment]["requests_total"] == 12


def test_retry_budget_caps_the_attempts(gateway: GatewayClient) -> None:
    statuses = []
    for index in range(6):
        reply = gateway.post(chat_body("budget2", f"b{index}"))
        statuses.append(reply.status_code)
        if reply.status_code != 200:
            assert reply.json()["error"]["type"] in ("upstream_server_error",
                                                     "upstream_unreachable")
    rows = gateway.deployments("budget2")
    # Two attempts each: a request starting at dead gets dead then err and fails with err's
    # 500 (as 502); the next one starts at ok.
    assert statuses == [502, 200] * 3
    assert {d: r["requests_total"] for d, r in rows.items()} == {"dead": 3, "err": 3, "ok": 3}
    gateway.assert_idle()


def test_a_4xx_is_returned_at_once_without_failover(
    gateway: GatewayClient, upstreams: dict[str, RunningUpstream]
) -> None:
    ok_before = received(upstreams["ok"])
    reply = gateway.post(chat_body("picky", "bad request"))
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "test upstream says 400"
    assert received(upstreams["ok"]) == ok_before
    assert gateway.deployments("picky")["picky"]["requests_total"] == 1
    gateway.assert_idle()


def test_the_overall_deadline_bounds_the_whole_request(gateway: GatewayClient) -> None:
    started = time.monotonic()
    reply = gateway.post(chat_body("slow", "tick"))
    elapsed_s = time.monotonic() - started
    assert reply.status_code == 504
    assert REQUEST_TIMEOUT_S <= elapsed_s < REQUEST_TIMEOUT_S + 1.0
    rows = gateway.deployments("slow")
    # The deadline passed during the first attempt; nothing was sent to a second deployment
    # just to be failed for a deadline that was already gone.
    assert rows["slow"]["failures_total"] == 1 and rows["ok"]["requests_total"] == 0
    gateway.assert_idle()
