"""A real replica process spoken to with the official openai SDK and raw HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvgate.sim.settings import ReplicaSettings
from tests.sim.conftest import LLAVA, replica_process

MODEL = LLAVA.served_model_name
SYSTEM = {"role": "system", "content": "You answer questions about images. " * 12}
PNG_A = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000040000000308020000003b9639910000001449444154789c"
    "63e4129163800126062480c20100093400428f0b6d120000000049454e44ae426082"
)


def _image(data: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def client(llava_replica: ReplicaSettings) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=llava_replica.url + "/v1", api_key="none", max_retries=0) as c:
        yield c


def _http(settings: ReplicaSettings, method: str, path: str, body: object | None = None
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(settings.host, settings.port, timeout=10)
    try:
        payload = None if body is None else (
            body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _info(settings: ReplicaSettings) -> dict[str, Any]:
    status, body = _http(settings, "GET", "/get_server_info")
    assert status == 200
    info: dict[str, Any] = json.loads(body)["sim"]
    return info


def test_plain_endpoints(llava_replica: ReplicaSettings, client: openai.OpenAI) -> None:
    assert _http(llava_replica, "GET", "/health")[0] == 200
    assert json.loads(_http(llava_replica, "GET", "/version")[1]) == {"version": "0.33.0"}
    assert json.loads(_http(llava_replica, "GET", "/load")[1]) == {"server_load": 0}
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, body = _http(llava_replica, "GET", "/get_model_info")
    assert status == 200 and json.loads(body)["model_path"] == MODEL
    assert _http(llava_replica, "GET", "/nope")[0] == 404


def test_blocking_chat_is_deterministic_with_usage(client: openai.OpenAI) -> None:
    messages: Any = [SYSTEM, {"role": "user", "content": "Describe the weather."}]
    first = client.chat.completions.create(model=MODEL, messages=messages)
    second = client.chat.completions.create(model=MODEL, messages=messages)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 100
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens - 16  # all full blocks but the last token's


def test_streaming_with_usage_matches_blocking(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Stream me something, please."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks
              if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_raw_sse_ends_with_done(llava_replica: ReplicaSettings) -> None:
    status, body = _http(llava_replica, "POST", "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": True})
    assert status == 200
    events = [line for line in body.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])


def test_continuous_usage_stats(llava_replica: ReplicaSettings) -> None:
    status, body = _http(llava_replica, "POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    assert status == 200
    chunks = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e.startswith("data: {")]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3]
    assert chunks[-1]["choices"] == []


def test_max_tokens_is_honoured(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "long please"}], max_tokens=7)
    assert response.usage is not None and response.usage.completion_tokens == 7
    assert response.choices[0].finish_reason == "length"


def test_continue_final_message_resumes_the_same_answer(client: openai.OpenAI) -> None:
    history: list[Any] = [SYSTEM, {"role": "user", "content": "Tell me a long story."}]
    full = client.chat.completions.create(model=MODEL, messages=history)
    text = full.choices[0].message.content or ""
    for cut in (1, 37, len(text) // 2):
        partial = text[:cut]
        rest = client.chat.completions.create(
            model=MODEL,
            messages=[*history, {"role": "assistant", "content": partial}],
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
        assert partial + (rest.choices[0].message.content or "") == text
        assert rest.choices[0].finish_reason == full.choices[0].finish_reason


def test_completions_endpoint(client: openai.OpenAI) -> None:
    blocking = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert blocking.choices[0].finish_reason == "length"
    assert blocking.usage is not None and blocking.usage.completion_tokens == 5
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == blocking.choices[0].text


def test_image_prompts_hit_only_for_the_same_image(client: openai.OpenAI) -> None:
    def ask(image: bytes, question: str) -> tuple[int, int]:
        messages: Any = [
            {"role": "user", "content": [_image(image), {"type": "text", "text": question}]}]
        response = client.chat.completions.create(model=MODEL, max_tokens=2, messages=messages)
        usage = response.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0
    prompt_tokens, cached = ask(PNG_A, "What is in the picture?")
    assert prompt_tokens > 1500 and cached == 0  # image_tokens=1500 for this replica
    _, cached = ask(PNG_A, "And what colour is it?")
    assert cached >= 1500
    other = PNG_A[:-12] + b"\x00" * 12  # different bytes, different mm hash
    _, cached = ask(other, "What is in the picture?")
    assert cached < 16


def test_errors(llava_replica: ReplicaSettings) -> None:
    status, body = _http(llava_replica, "POST", "/v1/chat/completions",
                         {"model": "gpt-x", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and json.loads(body)["error"]["code"] == 404
    status, body = _http(llava_replica, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and "error" in json.loads(body)
    status, _ = _http(llava_replica, "POST", "/v1/chat/completions", {
        "messages": [{"role": "assistant", "content": "x"}], "continue_final_message": True,
        "add_generation_prompt": True})
    assert status == 400
    for bad in ({"n": 2}, {"n": "x"}, {"max_tokens": "5"}, {"max_tokens": 0},
                {"messages": "hi"}, {"messages": [{"role": "user", "content": 5}]}):
        request = {"messages": [{"role": "user", "content": "x"}], **bad}
        status, payload = _http(llava_replica, "POST", "/v1/chat/completions", request)
        assert status == 400, bad
        assert set(json.loads(payload)["error"]) == {"message", "type", "param", "code"}


def test_tokenize_agrees_with_usage(llava_replica: ReplicaSettings, client: openai.OpenAI
                                    ) -> None:
    messages: Any = [{"role": "user", "content": "count my tokens"}]
    status, body = _http(llava_replica, "POST", "/tokenize", {"messages": messages})
    assert status == 200
    tokenized = json.loads(body)
    usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1).usage
    assert usage is not None and tokenized["count"] == usage.prompt_tokens
    assert len(tokenized["tokens"]) == tokenized["count"]


def test_metrics_and_server_info(llava_replica: ReplicaSettings) -> None:
    status, body = _http(llava_replica, "GET", "/metrics")
    assert status == 200
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples if not s.labels.get("le") and not s.labels.get("finished_reason")}
    assert samples["vllm:prefix_cache_queries_total"] > 0
    assert samples["vllm:prefix_cache_hits_total"] > 0
    assert samples["vllm:time_to_first_token_seconds_count"] > 0
    info = _info(llava_replica)
    assert info["profile"] == "llava-onevision-7b-a40" and info["num_gpu_blocks"] == 4000


def test_client_disconnect_aborts_and_frees_blocks(llava_replica: ReplicaSettings) -> None:
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 5000, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "never ending " * 50}]}).encode()
    sock = socket.create_connection((llava_replica.host, llava_replica.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                 b"application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
                 + body)
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    assert _info(llava_replica)["num_running"] == 1
    assert _info(llava_replica)["kv_cache_usage"] > 0
    sock.close()
    deadline = time.monotonic() + 5
    while _info(llava_replica)["num_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    info = _info(llava_replica)
    assert info["num_running"] == 0 and info["kv_cache_usage"] == 0.0
    metrics = _http(llava_replica, "GET", "/metrics")[1].decode()
    aborted = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.labels.get("finished_reason") == "abort"]
    assert aborted == [1.0]


def test_flush_cache(llava_replica: ReplicaSettings) -> None:
    assert _http(llava_replica, "POST", "/flush_cache")[0] == 200
    assert _info(llava_replica)["cached_blocks"] == 0


def test_timing_ratio_and_memory_in_real_time() -> None:
    with replica_process(profile="llava-onevision-7b-a40", time_scale=5.0, kv_blocks=2000,
                         image_tokens=6561) as (settings, process):
        with openai.OpenAI(base_url=settings.url + "/v1", api_key="none", max_retries=0) as c:
            def ttft(question: str) -> float:
                messages: Any = [{"role": "user", "content": [
                    _image(PNG_A), {"type": "text", "text": question}]}]
                start = time.perf_counter()
                stream = c.chat.completions.create(model=MODEL, stream=True, max_tokens=2,
                                                   messages=messages)
                for _ in stream:
                    elapsed = time.perf_counter() - start
                    break
                for _ in stream:
                    pass
                return elapsed
            cold, warm = ttft("What is it?"), ttft("Where is it?")
        # Modelled: ~1.75 s cold, ~0.25 s warm; /5 in wall time, plus HTTP overhead.
        assert 1.3 / 5 <= cold <= 2.7 / 5 + 0.15
        assert cold > 3 * warm
        with open(f"/proc/{process.pid}/status") as status:
            rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        assert rss_kb < 100 * 1024
