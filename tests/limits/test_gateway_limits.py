"""Tenant limits end to end: `kvgate run` with tenants, the official openai SDK as the client."""

from __future__ import annotations

import time
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
      - {{ provider: mock, model: small, cost_per_1k_input: 0, cost_per_1k_output: 1.0,
          max_output_tokens: 16 }}
  - name: other
    deployments: [{{ provider: mock, model: other }}]
cache: {{ exact: {{ enabled: true }} }}
tenants:
  - {{ name: rpm, api_keys: [key-rpm], rate_limit: {{ rpm: 3 }} }}
  - {{ name: tpm, api_keys: [key-tpm], rate_limit: {{ tpm: 15 }} }}
  - {{ name: budget, api_keys: [key-budget], budget: {{ usd: 0.04, window: daily }} }}
  - {{ name: free, api_keys: [key-free] }}
  - name: keyed
    models: [m]
    budget: {{ usd: 1.0, window: daily }}
    api_keys:
      - key-plain
      - {{ key: key-slow, name: slow, rate_limit: {{ rpm: 1 }} }}
      - {{ key: key-cheap, name: cheap, budget: {{ usd: 0.02, window: daily }} }}
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


def test_tokens_per_minute_reserve_the_estimate_and_settle_to_usage(
        gateway: RunningGateway) -> None:
    c = client(gateway, "key-tpm")
    first = ask(c, "count my tokens")
    assert first.usage is not None
    used = first.usage.prompt_tokens + first.usage.completion_tokens
    assert used > 15  # this answer alone exceeds the minute's 15 tokens
    # The admission reserved the estimate: 11 prompt tokens (15 characters / 4, rounded up,
    # + 4 for the message + 3 for the reply) + the 16-token output cap = 27.
    assert stats(gateway)["tpm"]["tokens_left"] == 15 - 27
    with pytest.raises(openai.RateLimitError) as caught:
        ask(c, "and again")
    assert "15 tokens per minute" in caught.value.response.json()["error"]["message"]
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    left = stats(gateway)["tpm"]["tokens_left"]
    # Settled to usage: in debt by what the answer used beyond the minute's tokens (less a
    # second's refill).
    assert isinstance(left, float) and left == pytest.approx(15 - used, abs=1)


def test_budget_refuses_what_could_exceed_it_and_counts_streams(
        gateway: RunningGateway) -> None:
    c = client(gateway, "key-budget")
    # 16 completion tokens at $1 per 1k output tokens: $0.016 per answer, as estimated.
    blocking = ask(c, "first")
    assert blocking.model_extra["kvgate"]["cost_usd"] == pytest.approx(0.016)  # type: ignore[index]
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "second"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    # $0.032 spent + $0.016 estimated > $0.04: refused before it could overshoot.
    with pytest.raises(openai.APIStatusError) as caught:
        ask(c, "third")
    assert caught.value.status_code == 402
    body = caught.value.response.json()["error"]
    assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
    assert "$0.04" in body["message"] and set(body) == {"message", "type", "code", "param"}
    assert int(caught.value.response.headers["retry-after"]) <= 86400
    tenant = admin_tenant(gateway, "budget")
    assert tenant["spent_usd"] == pytest.approx(0.032)
    assert tenant["reserved_usd"] == 0 and tenant["reservations"] == 0
    assert tenant["remaining_usd"] == pytest.approx(0.008)
    assert metric(gateway, 'kvgate_tenant_spend_usd_total{tenant="budget"}') == pytest.approx(
        0.032)
    assert metric(gateway, 'kvgate_limit_rejections_total{limit="budget",tenant="budget"}') == 1


def admin_tenant(gateway: RunningGateway, name: str) -> dict[str, object]:
    response = httpx.get(f"{gateway.url}/admin/tenants/{name}",
                         headers={"authorization": "Bearer admin-secret"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def settled(gateway: RunningGateway, name: str) -> dict[str, object]:
    """The tenant's figures once nothing is reserved any more (the gateway settles a left
    stream when it notices the disconnect)."""
    for _ in range(200):
        tenant = admin_tenant(gateway, name)
        if tenant["reservations"] == 0:
            return tenant
        time.sleep(0.05)
    raise AssertionError(f"tenant {name} still holds reservations: {tenant}")


def test_a_stream_the_client_leaves_is_settled_for_what_it_received() -> None:
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
        tenant = settled(gateway, "budget")
        # At least its 5 relayed tokens ($0.001 each) and at most its whole 16; nothing held.
        assert 0.005 - 1e-9 <= float(tenant["spent_usd"]) <= 0.016 + 1e-9  # type: ignore[arg-type]
        assert tenant["reserved_usd"] == 0
        assert float(tenant["spent_usd"]) == pytest.approx(  # type: ignore[arg-type]
            metric(gateway, 'kvgate_tenant_spend_usd_total{tenant="budget"}'), abs=1e-9)


def test_two_gateways_share_limits_through_redis() -> None:
    with run_redis() as url, run_gateway(config(backend="redis", redis_url=url)) as one, \
            run_gateway(config(backend="redis", redis_url=url)) as two:
        answered = [ask(client(g, "key-rpm"), f"q{i}") for i, g in enumerate((one, two, one))]
        assert all(a.choices for a in answered)
        with pytest.raises(openai.RateLimitError):
            ask(client(two, "key-rpm"), "over the shared limit")


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    error: dict[str, object] = body["error"]
    return error


def post(gateway: RunningGateway, key: str | None, model: str = "m") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.base_url + "/chat/completions", headers=headers, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_refusals_have_openais_error_shape(gateway: RunningGateway) -> None:
    missing = post(gateway, None)
    assert missing.status_code == 401 and error_of(missing)["type"] == "authentication_error"
    wrong_model = post(gateway, "key-plain", model="other")
    assert wrong_model.status_code == 403
    error = error_of(wrong_model)
    assert (error["code"], error["type"], error["param"]) == (
        "model_not_allowed", "permission_error", "model")
    # A model refused costs nothing: the tenant's figures are untouched.
    assert admin_tenant(gateway, "keyed")["spent_usd"] == 0
    assert post(gateway, "key-free", model="other").status_code == 200  # unrestricted tenant


def test_per_key_limits_apply_on_top_of_the_tenants(gateway: RunningGateway) -> None:
    assert post(gateway, "key-slow").status_code == 200
    limited = post(gateway, "key-slow")
    assert limited.status_code == 429 and limited.headers["retry-after"]
    error = error_of(limited)
    assert error["code"] == "rate_limit_exceeded"
    assert "API key 'slow' of tenant 'keyed'" in str(error["message"])
    assert post(gateway, "key-plain").status_code == 200  # the tenant's other keys are not
    # key-cheap: $0.02 of its own; each answer is estimated (and costs) 4 tokens = $0.004.
    codes = [post(gateway, "key-cheap").status_code for _ in range(6)]
    assert codes == [200] * 5 + [402]
    tenant = admin_tenant(gateway, "keyed")
    keys = tenant["keys"]
    assert isinstance(keys, dict)
    assert keys["cheap"]["spent_usd"] == pytest.approx(0.02)
    assert keys["cheap"]["remaining_usd"] == 0
    assert keys["slow"]["limits"]["rpm"] == 1 and keys["slow"]["requests_left"] < 1
    # The tenant's spend is every key's: 7 answers of $0.004.
    assert tenant["spent_usd"] == pytest.approx(0.028)
    assert tenant["limits"] == {"rpm": None, "tpm": None, "budget_usd": 1.0,
                                "budget_window": "daily"}
    assert tenant["models"] == ["m"]


def test_admin_tenants_needs_the_admin_key_and_resets_a_window(
        gateway: RunningGateway) -> None:
    url = f"{gateway.url}/admin/tenants/rpm"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer key-rpm"}).status_code == 401
    admin = {"authorization": "Bearer admin-secret"}
    assert error_of(httpx.get(f"{gateway.url}/admin/tenants/nobody", headers=admin))[
        "code"] == "tenant_not_found"
    c = client(gateway, "key-budget")
    while True:  # spend the budget (other tests may have spent some of it already)
        try:
            ask(c, "spend", max_tokens=16)
        except openai.APIStatusError as refused:
            assert refused.status_code == 402
            break
    reset = httpx.post(f"{gateway.url}/admin/tenants/budget/reset", headers=admin)
    assert reset.status_code == 200 and reset.json()["spent_usd"] == 0
    assert reset.json()["remaining_usd"] == pytest.approx(0.04)
    assert ask(c, "after the reset").choices
    assert admin_tenant(gateway, "budget")["spent_usd"] == pytest.approx(0.016)
