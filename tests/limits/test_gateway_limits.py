"""Tenant limits end to end: `kvgate run` with tenants, the official openai SDK as the client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.processes import RunningGateway, run_gateway
from tests.support.redis_server import run_redis

CONFIG = """
server: {{ admin_key: admin-secret }}
providers:
  mock: {{ type: mock, tokens_per_s: {tokens_per_s} }}
models:
  - name: m
    deployments:
      - {{ provider: mock, model: small, cost_per_1k_input: 0, cost_per_1k_output: 1.0 }}
cache: {{ exact: {{ enabled: true }} }}
tenants:
  - {{ name: rpm, api_keys: [key-rpm], rate_limit: {{ rpm: 3 }} }}
  - {{ name: tpm, api_keys: [key-tpm], rate_limit: {{ tpm: 15 }} }}
  - {{ name: budget, api_keys: [key-budget], budget: {{ usd: 0.04, window: daily }} }}
  - {{ name: free, api_keys: [key-free] }}
limits_backend: {backend}
redis: {{ url: "{redis_url}" }}
"""


def config(*, backend: str = "memory", redis_url: str = "redis://127.0.0.1:1/0",
           tokens_per_s: float = 0) -> str:
    return CONFIG.format(backend=backend, redis_url=redis_url, tokens_per_s=tokens_per_s)


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway(config()) as running:
        yield running


def client(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def ask(c: openai.OpenAI, text: str, **extra: object) -> openai.types.chat.ChatCompletion:
    return c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], **extra)  # type: ignore[call-overload]


def stats(gateway: RunningGateway) -> dict[str, dict[str, object]]:
    response = httpx.get(gateway.url + "/admin/stats",
                         headers={"authorization": "Bearer admin-secret"})
    tenants: dict[str, dict[str, object]] = response.json()["tenants"]
    return tenants


def metric(gateway: RunningGateway, line_start: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_over_the_rate_get_429_with_retry_after(gateway: RunningGateway) -> None:
    c = client(gateway, "key-rpm")
    remaining = []
    for i in range(3):  # a cached answer counts as a request too
        raw = c.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "same question"}], temperature=0)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-kvgate-cache"] == ("miss" if i == 0 else "exact")
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as caught:
        ask(c, "one more")
    error = caught.value
    assert error.status_code == 429
    assert 1 <= int(error.response.headers["retry-after"]) <= 20
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    body = error.response.json()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
    assert "3 requests per minute" in body["message"]
    assert metric(gateway, 'kvgate_limit_rejections_total{limit="requests",tenant="rpm"}') == 1
    # Other tenants are not affected; a tenant without limits has none.
    assert ask(client(gateway, "key-free"), "hello").choices[0].message.content


def test_tokens_per_minute_count_what_the_answers_used(gateway: RunningGateway) -> None:
    c = client(gateway, "key-tpm")
    first = ask(c, "count my tokens")
    assert first.usage is not None
    used = first.usage.prompt_tokens + first.usage.completion_tokens
    assert used > 15  # this answer alone exceeds the minute's 15 tokens
    assert stats(gateway)["tpm"]["tokens_left"] == 15  # as of the admission, before the charge
    with pytest.raises(openai.RateLimitError) as caught:
        ask(c, "and again")
    assert "15 tokens per minute" in caught.value.response.json()["error"]["message"]
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    left = stats(gateway)["tpm"]["tokens_left"]
    # In debt by what the answer used beyond the minute's tokens (less a second's refill).
    assert isinstance(left, float) and left == pytest.approx(15 - used, abs=1)


def test_budget_exhausted_gives_402_and_counts_streams(gateway: RunningGateway) -> None:
    c = client(gateway, "key-budget")
    # 16 completion tokens at $1 per 1k output tokens: $0.016 per answer.
    blocking = ask(c, "first")
    assert blocking.model_extra["kvgate"]["cost_usd"] == pytest.approx(0.016)  # type: ignore[index]
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "second"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert ask(c, "third")  # $0.032 spent < $0.04: still admitted
    with pytest.raises(openai.APIStatusError) as caught:
        ask(c, "fourth")
    assert caught.value.status_code == 402
    body = caught.value.response.json()["error"]
    assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
    assert "$0.04" in body["message"]
    assert int(caught.value.response.headers["retry-after"]) <= 86400
    assert stats(gateway)["budget"]["spent_usd"] == pytest.approx(0.048)
    assert metric(gateway, 'kvgate_tenant_spend_usd_total{tenant="budget"}') == pytest.approx(
        0.048)
    assert metric(gateway, 'kvgate_limit_rejections_total{limit="budget",tenant="budget"}') == 1


def test_a_stream_the_client_leaves_is_charged_for_what_it_received() -> None:
    with run_gateway(config(tokens_per_s=50)) as gateway:
        c = client(gateway, "key-budget")
        stream = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a slow answer"}], stream=True)
        received = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 5:
                break
        stream.close()
        # The gateway charges when it notices the disconnect and closes the upstream; each
        # probe's admission refreshes the tenant's figures in /admin/stats.
        probes, spent = 0, 0.0
        while probes < 20:
            ask(c, f"probe {probes}")
            probes += 1
            spent = float(stats(gateway)["budget"]["spent_usd"])  # type: ignore[arg-type]
            if spent > (probes - 1) * 0.016 + 1e-9:
                break
        # Admissions see the spend before the current probe's own charge: what is there beyond
        # the earlier probes ($0.016 each) is the left stream, at least its 5 relayed tokens
        # ($0.001 each) and at most its whole 16.
        stream_usd = spent - (probes - 1) * 0.016
        assert 0.005 - 1e-9 <= stream_usd <= 0.016 + 1e-9


def test_two_gateways_share_limits_through_redis() -> None:
    with run_redis() as url, run_gateway(config(backend="redis", redis_url=url)) as one, \
            run_gateway(config(backend="redis", redis_url=url)) as two:
        answered = [ask(client(g, "key-rpm"), f"q{i}") for i, g in enumerate((one, two, one))]
        assert all(a.choices for a in answered)
        with pytest.raises(openai.RateLimitError):
            ask(client(two, "key-rpm"), "over the shared limit")
