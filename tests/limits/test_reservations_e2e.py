"""Budgets by reservation, end to end: real gateways (`kvgate run`) sharing a real
redis-server, the official openai SDK and httpx as clients.

The figures are read back through ``/admin/tenants/{name}`` and compared with what the
gateways settled (``kvgate_tenant_spend_usd_total``), to the cent, after every ending: an
answer, an upstream 500, failover exhausted, the deadline, a client leaving a stream, and a
gateway killed mid-request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from tests.support.processes import (
    RunningGateway,
    RunningUpstream,
    run_gateway,
    run_upstream,
)
from tests.support.redis_server import run_redis

CONFIG = """
server: {{ admin_key: admin-secret, request_timeout_s: 2 }}
providers:
  mock: {{ type: mock, tokens_per_s: 50 }}
  up: {{ type: openai_compatible, api_base: "{api_base}" }}
models:
  - name: slow-mock
    deployments:
      - {{ provider: mock, model: small, cost_per_1k_input: 0, cost_per_1k_output: 1.0 }}
  - name: single
    routing: {{ max_attempts: 1 }}
    deployments:
      - {{ provider: up, model: up-model, cost_per_1k_input: 1.0, cost_per_1k_output: 1.0,
          max_output_tokens: 8 }}
  - name: pair
    routing: {{ max_attempts: 2 }}
    deployments:
      - {{ id: a, provider: up, model: up-model, cost_per_1k_input: 1.0,
          cost_per_1k_output: 1.0, max_output_tokens: 8 }}
      - {{ id: b, provider: up, model: up-model, cost_per_1k_input: 0.5,
          cost_per_1k_output: 2.0, max_output_tokens: 8 }}
routing: {{ health_check_interval_s: 0, breaker: {{ enabled: false }} }}
cache: {{ exact: {{ enabled: false }} }}
tenants:
  - {{ name: burst, api_keys: [key-burst], budget: {{ usd: 0.1, window: daily }} }}
  - {{ name: paths, api_keys: [key-paths], budget: {{ usd: 10, window: daily }} }}
  - {{ name: roll, api_keys: [key-roll], budget: {{ usd: 0.05, window: 2 }} }}
  - {{ name: killed, api_keys: [key-killed], budget: {{ usd: 0.05, window: daily }} }}
limits: {{ backend: redis, reservation_margin_s: 1 }}
redis: {{ url: "{redis_url}" }}
"""
#: 16 completion tokens at $1 per 1k: what one slow-mock answer costs and is estimated at.
ANSWER_USD = 0.016
ADMIN = {"authorization": "Bearer admin-secret"}
#: The config, the test upstream and two gateways sharing one redis-server.
Fleet = tuple[str, RunningUpstream, RunningGateway, RunningGateway]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with run_redis() as url, run_upstream() as upstream:
        config = CONFIG.format(api_base=upstream.api_base, redis_url=url)
        with run_gateway(config) as one, run_gateway(config) as two:
            yield config, upstream, one, two


def tenant(gateway: RunningGateway, name: str) -> dict[str, float]:
    response = httpx.get(f"{gateway.url}/admin/tenants/{name}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, float] = response.json()
    return body


def settled(gateway: RunningGateway, name: str, attempts: int = 400) -> dict[str, float]:
    """The tenant's figures once it holds no reservation (settlements are written in the
    background, and a left stream is settled when the gateway notices)."""
    for _ in range(attempts):
        figures = tenant(gateway, name)
        if figures["reservations"] == 0:
            return figures
        time.sleep(0.05)
    raise AssertionError(f"{name} still holds reservations: {figures}")


def spend_metric(*gateways: RunningGateway, name: str) -> float:
    total = 0.0
    for gateway in gateways:
        for line in httpx.get(gateway.url + "/metrics").text.splitlines():
            if line.startswith(f'kvgate_tenant_spend_usd_total{{tenant="{name}"}}'):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def burst(gateways: tuple[RunningGateway, ...], key: str, count: int) -> list[int]:
    """``count`` concurrent requests spread over ``gateways``; their statuses."""
    clients = [openai.AsyncOpenAI(base_url=g.base_url, api_key=key, max_retries=0)
               for g in gateways]

    async def one(index: int) -> int:
        try:
            await clients[index % len(clients)].chat.completions.create(
                model="slow-mock", max_tokens=16,
                messages=[{"role": "user", "content": f"question {index}"}])
        except openai.APIStatusError as error:
            return error.status_code
        return 200

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for c in clients:
            await c.close()


def test_thirty_concurrent_requests_over_two_gateways_stay_within_the_budget(fleet: Fleet) -> None:
    _, _, one, two = fleet
    statuses = asyncio.run(burst((one, two), "key-burst", 30))
    figures = settled(one, "burst")
    # $0.1 holds 6 answers of $0.016 (each estimated exactly: max_tokens is set).
    assert sorted(statuses) == [200] * 6 + [402] * 24
    assert figures["spent_usd"] <= 0.1 + ANSWER_USD
    assert figures["spent_usd"] == pytest.approx(6 * ANSWER_USD)
    assert figures["reserved_usd"] == 0
    assert figures["spent_usd"] == pytest.approx(spend_metric(one, two, name="burst"), abs=0.005)


def test_every_ending_releases_its_reservation(fleet: Fleet) -> None:
    _, upstream, one, two = fleet
    c = openai.OpenAI(base_url=one.base_url, api_key="key-paths", max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    answer = c.chat.completions.create(model="single", messages=messages)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    for control, model, status in (({"status": 500}, "single", 502),   # upstream error
                                   ({"status": 500}, "pair", 502),     # failover exhausted
                                   ({"delay_s": 4}, "single", 504)):   # the deadline
        upstream.control(**control)
        with pytest.raises(openai.APIStatusError) as caught:
            c.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        assert caught.value.status_code == status
        upstream.control()
        figures = settled(one, "paths")
        assert figures["reserved_usd"] == 0
    upstream.control(chunk_delay_s=0.3)
    stream = c.chat.completions.create(model="pair", messages=messages,  # type: ignore[arg-type]
                                       stream=True)
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 2:
            break
    stream.close()  # the client leaves mid-stream
    upstream.control()
    figures = settled(two, "paths")
    assert figures["reserved_usd"] == 0 and figures["reservations"] == 0
    # Spend is exactly what the gateways settled: the answer ($0.015) and the left stream's
    # relayed tokens; the failed requests billed nothing.
    assert figures["spent_usd"] == pytest.approx(spend_metric(one, two, name="paths"), abs=0.005)
    assert 0.015 < figures["spent_usd"] <= 0.015 + 8 * 0.002 + 1e-9


def test_budget_windows_roll_over_under_load(fleet: Fleet) -> None:
    config, _, one, two = fleet
    statuses: list[int] = []
    started = time.time()
    while time.time() - started < 5:  # load across at least two 2-second windows
        statuses += asyncio.run(burst((one, two), "key-roll", 6))
    settled(one, "roll")
    client = redis.Redis.from_url(config.split('url: "')[-1].split('"')[0])
    spends = {k.decode(): int(client.get(k) or 0)
              for k in client.scan_iter("kvgate:limits:{roll}:2s-*:spend_nusd")}
    reserved = [int(client.get(k) or 0)
                for k in client.scan_iter("kvgate:limits:{roll}:2s-*:reserved_nusd")]
    client.close()
    assert len(spends) >= 2  # the load crossed windows
    assert all(spend <= 50_000_000 for spend in spends.values()), spends  # $0.05 each
    assert reserved and all(r == 0 for r in reserved)
    assert statuses.count(200) == sum(spends.values()) // 16_000_000
    assert set(statuses) == {200, 402}


def test_a_gateway_killed_mid_request_leaves_a_reservation_that_expires(fleet: Fleet) -> None:
    config, upstream, _, two = fleet
    upstream.control(chunk_delay_s=1.0)  # an 8-second stream: killed long before its end
    with run_gateway(config) as doomed:
        c = openai.OpenAI(base_url=doomed.base_url, api_key="key-killed", max_retries=0)
        stream = c.chat.completions.create(
            model="single", stream=True,
            messages=[{"role": "user", "content": "a long answer"}])
        next(iter(stream))
        held = tenant(two, "killed")
        assert held["reservations"] == 1 and held["reserved_usd"] > 0
        doomed.process.kill()
        doomed.process.wait()
    upstream.control()
    # request_timeout_s 2 + reservation_margin_s 1: Redis drops it 3 s after admission.
    figures = settled(two, "killed")
    assert figures["reserved_usd"] == 0 and figures["spent_usd"] == 0
    assert figures["remaining_usd"] == pytest.approx(0.05)
