"""Requests through the gateway in front of real vLLM replicas, and what came back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from kvgate.bench.images import generate_png, png_data_url
from kvgate.bench.text import filler
from kvgate.testing.vllm import ReplicaFleet, deployment_id
from tests.support.processes import RunningGateway

CHAT = "/v1/chat/completions"
SERVED_MODEL = "tiny-llava"


@dataclass
class Answer:
    """One completed request: where it ran, what the engine cached, how the router chose."""

    deployment: str
    usage: dict[str, Any]
    route: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    finish_reason: str | None = None
    ttft_s: float | None = None
    chunks: int = 0

    @property
    def cached_tokens(self) -> int:
        details = self.usage.get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0)

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage["prompt_tokens"])


def text_messages(document: str, question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": document}, {"role": "user", "content": question}]


def image_messages(image_url: str, question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": question}]}]


def document(name: str, tokens: int = 1500) -> str:
    return filler(tokens, "realvllm.document", name)


def question(name: str, index: int, tokens: int = 24) -> str:
    return filler(tokens, "realvllm.question", name, index)


def image(name: str, size: int = 512) -> str:
    return png_data_url(generate_png(size, size, "realvllm.image", name))


class RealGateway:
    def __init__(self, gateway: RunningGateway, fleet: ReplicaFleet) -> None:
        self.url = gateway.url
        self.process = gateway.process
        self.fleet = fleet
        self.http = httpx.Client(base_url=gateway.url, timeout=120)

    def close(self) -> None:
        self.http.close()

    def ask(self, model: str, messages: list[dict[str, Any]], *, max_tokens: int = 4,
            stream: bool = False) -> Answer:
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                                "ignore_eos": True}
        if not stream:
            response = self.http.post(CHAT, json=body)
            assert response.status_code == 200, response.text
            data = response.json()
            meta = data["kvgate"]
            assert meta["deployment"] == response.headers["x-kvgate-deployment"]
            return Answer(meta["deployment"], data["usage"], meta.get("route") or {},
                          data["choices"][0]["message"]["content"] or "",
                          data["choices"][0]["finish_reason"])
        return self.stream(body)

    def stream(self, body: dict[str, Any],
               on_chunk: Callable[[int, str], None] | None = None) -> Answer:
        """Stream ``body``; ``on_chunk(count, deployment)`` runs after each content chunk."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.monotonic()
        answer = Answer("", {})
        done = False
        with self.http.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200, response.read()
            answer.deployment = response.headers["x-kvgate-deployment"]
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    done = True
                    continue
                event = orjson.loads(payload)
                assert "error" not in event, event
                if event.get("usage"):
                    answer.usage = event["usage"]
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content") or ""
                    if content:
                        if answer.ttft_s is None:
                            answer.ttft_s = time.monotonic() - started
                        answer.text += content
                        answer.chunks += 1
                        if on_chunk is not None:
                            on_chunk(answer.chunks, answer.deployment)
                    if choice.get("finish_reason"):
                        answer.finish_reason = choice["finish_reason"]
        assert done, "stream ended without [DONE]"
        return answer

    def kv_state(self, model: str = "precise") -> dict[str, dict[str, Any]]:
        stats = self.http.get("/admin/stats").json()
        for entry in stats["models"]:
            if entry["name"] == model:
                return {d["id"]: d.get("kv_cache") or {} for d in entry["deployments"]}
        raise KeyError(model)

    def replica(self, deployment: str) -> Any:
        for replica in self.fleet.replicas:
            if deployment_id(replica.index) == deployment:
                return replica
        raise KeyError(deployment)

    def ask_replica(self, deployment: str, messages: list[dict[str, Any]],
                    max_tokens: int = 2) -> dict[str, Any]:
        """Straight to one replica, around the gateway (to fill its cache)."""
        replica = self.replica(deployment)
        response = httpx.post(replica.api_base + "/chat/completions", timeout=120, json={
            "model": SERVED_MODEL, "messages": messages, "max_tokens": max_tokens})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


    def engines_idle(self) -> bool:
        """No replica is running or queueing anything (per vLLM's own gauges)."""
        for replica in self.fleet.replicas:
            text = httpx.get(replica.url + "/metrics", timeout=10).text
            gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
            if any(line.startswith(gauges) and float(line.rsplit(" ", 1)[1]) > 0
                   for line in text.splitlines()):
                return False
        return True


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s: {what}"
        time.sleep(0.1)
