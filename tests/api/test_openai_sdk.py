"""The official openai SDK against a running `kvgate run` with its built-in demo config."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.processes import RunningGateway, run_gateway


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway() as running:
        yield running


@pytest.fixture()
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)


def test_blocking_chat_answers_deterministically_with_metadata(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What does a KV cache hold?"}]
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
    first = raw.parse()
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens == 16
    assert first.usage.prompt_tokens > 0
    assert raw.headers["x-kvgate-cache"] == "miss"
    assert raw.headers["x-kvgate-deployment"].startswith("mock-")
    assert len(raw.headers["x-request-id"]) == 32
    meta = first.model_extra["kvgate"]  # type: ignore[index]
    assert meta["cache"] == "miss"
    assert meta["deployment"] == raw.headers["x-kvgate-deployment"]
    assert meta["request_id"] == raw.headers["x-request-id"]
    assert meta["route"]["strategy"] == "round_robin"
    # 16 completion tokens at the demo's prices, plus the prompt.
    expected_cost = (first.usage.prompt_tokens * 0.0005 + 16 * 0.0015) / 1000
    assert meta["cost_usd"] == pytest.approx(expected_cost)
    again = client.chat.completions.create(model="demo", messages=messages)
    assert again.choices[0].message.content == first.choices[0].message.content


def test_round_robin_alternates_between_the_two_demo_deployments(client: openai.OpenAI) -> None:
    seen = [
        client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": f"q{i}"}]
        ).headers["x-kvgate-deployment"]
        for i in range(6)
    ]
    assert set(seen) == {"mock-a/mock-small", "mock-b/mock-small"}
    assert all(a != b for a, b in itertools.pairwise(seen))


def test_streaming_text_equals_blocking_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream me an answer"}]
    blocking = client.chat.completions.create(model="demo", messages=messages, max_tokens=10)
    stream = client.chat.completions.create(
        model="demo", messages=messages, max_tokens=10, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == blocking.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 10
    assert all(c.usage is None for c in chunks), "usage was not asked for"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_usage_is_sent_when_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "count me"}], max_tokens=5,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_stream_headers_and_done_marker(gateway: RunningGateway) -> None:
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-kvgate-deployment"].startswith("mock-")
        assert response.headers["x-kvgate-cache"] == "miss"
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_exact_cache_hits_the_second_deterministic_request(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "cache me exactly"}]
    first = client.chat.completions.with_raw_response.create(
        model="demo", messages=messages, temperature=0
    )
    second = client.chat.completions.with_raw_response.create(
        model="demo", messages=messages, temperature=0
    )
    assert first.headers["x-kvgate-cache"] == "miss"
    assert second.headers["x-kvgate-cache"] == "exact"
    parsed = second.parse()
    assert parsed.model_extra["kvgate"]["cache"] == "exact"  # type: ignore[index]
    assert parsed.model_extra["kvgate"]["cost_usd"] == 0.0  # type: ignore[index]
    assert parsed.choices[0].message.content == first.parse().choices[0].message.content
    # The cached answer also serves a streamed request.
    stream = client.chat.completions.create(
        model="demo", messages=messages, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == parsed.choices[0].message.content
    # Non-deterministic requests are never served from the cache.
    third = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
    assert third.headers["x-kvgate-cache"] == "miss"


def test_legacy_completions_blocking_and_streaming(client: openai.OpenAI) -> None:
    done = client.completions.create(model="demo", prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text
    assert done.usage is not None and done.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model="demo", prompt="Once upon a time", max_tokens=6, stream=True
        ) if c.choices
    )
    assert streamed == done.choices[0].text


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["demo"]
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_image_parts_are_accepted(client: openai.OpenAI) -> None:
    png_1px = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_1px}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}])
    assert reply.choices[0].message.content


def test_health_ready_metrics_docs(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "kvgate_requests_total" in metrics
    assert 'kvgate_deployment_in_flight{deployment="mock-a/mock-small",model="demo"} 0.0' in metrics
    docs = httpx.get(gateway.url + "/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert httpx.get(gateway.url + "/docs/static/swagger-ui-bundle.js").status_code == 200
    schema = httpx.get(gateway.url + "/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]


def test_admin_stats_in_flight_returns_to_zero(client: openai.OpenAI,
                                               gateway: RunningGateway) -> None:
    # Its own request: the module's gateway is shared, and run alone (-k) nothing else
    # has sent one.
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    stats = httpx.get(gateway.url + "/admin/stats").json()
    deployments = stats["models"][0]["deployments"]
    assert {d["id"] for d in deployments} == {"mock-a/mock-small", "mock-b/mock-small"}
    assert all(d["in_flight"] == 0 for d in deployments)
    assert sum(d["requests_total"] for d in deployments) > 0


def test_gateway_overhead_is_observed_once_per_upstream_request(
        gateway: RunningGateway, client: openai.OpenAI) -> None:
    def count() -> float:
        for line in httpx.get(gateway.url + "/metrics").text.splitlines():
            if line.startswith("kvgate_gateway_overhead_seconds_count"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no kvgate_gateway_overhead_seconds_count")

    before = count()
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "o1"}])
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "o2"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert count() == before + 2
