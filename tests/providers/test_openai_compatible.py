"""`openai_compatible` deployments through a running gateway, against a local test upstream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.processes import (
    RunningGateway,
    RunningUpstream,
    free_port,
    run_gateway,
    run_upstream,
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningUpstream]:
    with run_upstream() as running:
        yield running


@pytest.fixture(scope="module")
def gateway(upstream: RunningUpstream) -> Iterator[RunningGateway]:
    config = f"""
providers:
  vllm: {{ type: openai_compatible, api_base: "{upstream.api_base}", api_key: "${{UP_KEY}}",
          read_timeout_s: 1.0, resume_streams: false }}
  dead: {{ type: openai_compatible, api_base: "http://127.0.0.1:{free_port()}/v1" }}
models:
  - name: llama
    deployments: [ {{ provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct,
                     cost_per_1k_input: 1.0, cost_per_1k_output: 2.0 }} ]
  - name: nowhere
    deployments: [ {{ provider: dead, model: x }} ]
"""
    with run_gateway(config, env={"UP_KEY": "sk-up"}) as running:
        yield running


@pytest.fixture(autouse=True)
def healthy_upstream(upstream: RunningUpstream) -> Iterator[None]:
    upstream.control()
    yield
    upstream.control()


def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)


def last_received(upstream: RunningUpstream) -> dict[str, object]:
    received = upstream.log()["received"]
    assert isinstance(received, list)
    return received[-1]  # type: ignore[no-any-return]


def test_body_passes_through_with_upstream_model_and_vllm_extras(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    reply = client(gateway).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        extra_body={"cache_salt": "tenant-a", "priority": 3, "top_k": 5},
    )
    sent = last_received(upstream)
    assert sent["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert sent["cache_salt"] == "tenant-a" and sent["priority"] == 3 and sent["top_k"] == 5
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    headers = upstream.log()["headers"][-1]  # type: ignore[index]
    assert headers["Authorization"] == "Bearer sk-up"
    assert reply.choices[0].message.content == "alpha beta gamma delta"
    meta = reply.model_extra["kvgate"]  # type: ignore[index]
    # 7 prompt tokens at 1.0/1k and 4 completion tokens at 2.0/1k.
    assert meta["cost_usd"] == pytest.approx((7 * 1.0 + 4 * 2.0) / 1000)
    assert meta["provider"] == "vllm"


def test_stream_always_asks_upstream_for_usage_and_strips_it(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True,
    ))
    assert last_received(upstream)["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "alpha beta gamma"
    with_usage = list(client(gateway).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True},
    ))
    usage = with_usage[-1].usage
    assert usage is not None and usage.completion_tokens == 3
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3


def test_stream_chunks_are_relayed_without_buffering(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.control(chunk_delay_s=0.2)
    arrivals: list[float] = []
    started = time.monotonic()
    stream = client(gateway).chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "slow"}], max_tokens=4, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # Each chunk reaches the client about when the upstream wrote it, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.4


def test_client_disconnect_cancels_the_upstream_stream(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.control(chunk_delay_s=0.2)
    before = upstream.log()["streams_abandoned"]
    body = {"model": "llama", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "long"}]}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # Closing the client connection must close the upstream one within a chunk interval.
    deadline = time.monotonic() + 3
    while upstream.log()["streams_abandoned"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.log()["streams_abandoned"] == before + 1  # type: ignore[operator]
    stats = httpx.get(gateway.url + "/admin/stats").json()
    assert stats["models"][0]["deployments"][0]["in_flight"] == 0


def test_blocking_client_disconnect_cancels_upstream(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.control(delay_s=0.8)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.base_url + "/chat/completions", timeout=0.3, json={
            "model": "llama", "messages": [{"role": "user", "content": "x"}]})
    time.sleep(0.2)
    stats = httpx.get(gateway.url + "/admin/stats").json()
    assert stats["models"][0]["deployments"][0]["in_flight"] == 0
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'status="499"' in metrics


def test_upstream_dying_mid_stream_ends_with_error_event_not_done(
    gateway: RunningGateway, upstream: RunningUpstream
) -> None:
    upstream.control(cut_after=2)
    body = {"model": "llama", "stream": True, "max_tokens": 6,
            "messages": [{"role": "user", "content": "cut"}]}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert "data: [DONE]" not in events
    assert '"error"' in events[-1]
    assert len([e for e in events if '"content"' in e]) == 2


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (503, 503), (429, 429), (400, 400),
                                                   (404, 404)])
def test_upstream_statuses_map_with_message_kept(
    gateway: RunningGateway, upstream: RunningUpstream, status: int, expected: int
) -> None:
    upstream.control(status=status)
    response = httpx.post(gateway.base_url + "/chat/completions", json={
        "model": "llama", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == expected
    assert response.json()["error"]["message"] == f"test upstream says {status}"


def test_upstream_timeout_is_504(gateway: RunningGateway, upstream: RunningUpstream) -> None:
    upstream.control(delay_s=1.5)
    response = httpx.post(gateway.base_url + "/chat/completions", timeout=10, json={
        "model": "llama", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"


def test_unreachable_upstream_is_502(gateway: RunningGateway) -> None:
    response = httpx.post(gateway.base_url + "/chat/completions", json={
        "model": "nowhere", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert "cannot connect" in response.json()["error"]["message"]


def test_concurrent_streams_all_complete(gateway: RunningGateway) -> None:
    texts: list[str] = []

    def one() -> None:
        stream = client(gateway).chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "x"}], max_tokens=5, stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts == ["alpha beta gamma delta epsilon"] * 8
