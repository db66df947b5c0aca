"""A client for end-to-end resilience tests against a running gateway (tests.support.processes).

One pooled ``httpx.Client`` per gateway: building a client per request costs more (its SSL
context) than the gateway spends on the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from tests.support.processes import RunningGateway

CHAT = "/v1/chat/completions"
Event = dict[str, Any] | str


def chat_body(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 5.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def streamed_text(events: list[Event]) -> str:
    parts = []
    for event in events:
        if isinstance(event, dict) and event.get("choices"):
            choice = event["choices"][0]
            delta = choice.get("delta")
            parts.append((delta.get("content") if delta is not None else choice.get("text"))
                         or "")
    return "".join(parts)


class GatewayClient:
    def __init__(self, gateway: RunningGateway) -> None:
        self.url = gateway.url
        self.http = httpx.Client(base_url=gateway.url, timeout=10)

    def close(self) -> None:
        self.http.close()

    def post(self, body: dict[str, Any], path: str = CHAT) -> httpx.Response:
        return self.http.post(path, json=body)

    def stream(self, body: dict[str, Any], path: str = CHAT) -> list[Event]:
        """Each SSE ``data:`` payload of a streamed request: a dict, or the string ``[DONE]``."""
        return list(self.iter_stream(body, path))

    def iter_stream(self, body: dict[str, Any], path: str = CHAT) -> Iterator[Event]:
        with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payload = line.removeprefix("data: ")
                    yield payload if payload == "[DONE]" else orjson.loads(payload)

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/admin/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def deployments(self, model: str) -> dict[str, dict[str, Any]]:
        """``/admin/stats`` rows of one model, by deployment id."""
        for entry in self.stats()["models"]:
            if entry["name"] == model:
                return {row["id"]: row for row in entry["deployments"]}
        raise KeyError(model)

    def circuit(self, model: str, deployment: str) -> dict[str, Any]:
        circuit: dict[str, Any] = self.deployments(model)[deployment]["circuit"]
        return circuit

    def metric(self, line_prefix: str) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split()[-1])
        return 0.0

    def assert_idle(self) -> None:
        """Every in-flight counter is back to zero: nothing lost, nothing counted twice."""

        def in_flight() -> list[int]:
            return [row["in_flight"]
                    for model in self.stats()["models"] for row in model["deployments"]]

        # The handler decrements before its last byte; the short wait only covers a client
        # that stopped reading early.
        wait_until(lambda: not any(in_flight()), timeout_s=2.0, what="in_flight == 0")
