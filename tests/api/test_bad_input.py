"""Every malformed request gets OpenAI's error shape with the right status, never a 500."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import RunningGateway, run_gateway

CONFIG = """
server: { max_body_bytes: 65536, max_image_bytes: 2048 }
providers:
  mock: { type: mock }
models:
  - name: demo
    deployments: [ { provider: mock, model: m } ]
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway(CONFIG) as running:
        yield running


def post(gateway: RunningGateway, body: bytes | dict[str, object],
         path: str = "/v1/chat/completions") -> httpx.Response:
    if isinstance(body, dict):
        return httpx.post(gateway.url + path, json=body)
    return httpx.post(gateway.url + path, content=body,
                      headers={"content-type": "application/json"})


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


def user(content: object) -> dict[str, object]:
    return {"model": "demo", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 7, "messages": []}, "model"),
        ({"model": "demo"}, "messages"),
        ({"model": "demo", "messages": "hello"}, "messages"),
        ({"model": "demo", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "demo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**user("x"), "stream": "yes"}, "stream"),
        ({**user("x"), "temperature": "hot"}, "temperature"),
        ({**user("x"), "temperature": 9}, "temperature"),
        ({**user("x"), "max_tokens": -1}, "max_tokens"),
        ({**user("x"), "max_tokens": 1.5}, "max_tokens"),
        ({**user("x"), "stream_options": 3}, "stream_options"),
        (user([{"type": "text"}]), "messages[0].content[0]"),
        (user([{"type": "image_url", "image_url": {"url": "ftp://x"}}]),
         "messages[0].content[0].image_url.url"),
    ],
)
def test_malformed_requests_get_400(gateway: RunningGateway, body: bytes | dict[str, object],
                                    param: str | None) -> None:
    error = assert_error(post(gateway, body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_completions_prompt_is_checked(gateway: RunningGateway) -> None:
    assert_error(post(gateway, {"model": "demo"}, "/v1/completions"), 400)
    assert_error(post(gateway, {"model": "demo", "prompt": {"a": 1}}, "/v1/completions"), 400)


def test_unknown_model_is_404(gateway: RunningGateway) -> None:
    error = assert_error(post(gateway, {"model": "gpt-9", "messages": [
        {"role": "user", "content": "x"}]}), 404, "model_not_found")
    assert "gpt-9" in error["message"]


def test_oversized_body_is_413_before_parsing(gateway: RunningGateway) -> None:
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "' + b"a" * 70000 + b'"}]}'
    assert_error(post(gateway, body), 413, "request_too_large")


def test_invalid_base64_image_is_422(gateway: RunningGateway) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64@@@"}}
    assert_error(post(gateway, user([part])), 422, "invalid_image")
    no_base64 = {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}
    assert_error(post(gateway, user([no_base64])), 422, "invalid_image")


def test_oversized_image_is_413(gateway: RunningGateway) -> None:
    data = base64.b64encode(b"\x89PNG" + b"\0" * 4000).decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
    assert_error(post(gateway, user([part])), 413, "image_too_large")


def test_unknown_route_and_method(gateway: RunningGateway) -> None:
    assert_error(httpx.get(gateway.url + "/v1/nope"), 404)
    assert_error(httpx.get(gateway.url + "/v1/chat/completions"), 405)


def test_errors_leave_counters_consistent(gateway: RunningGateway) -> None:
    for _ in range(3):
        post(gateway, b"{broken")
    stats = httpx.get(gateway.url + "/admin/stats").json()
    assert all(d["in_flight"] == 0 for d in stats["models"][0]["deployments"])
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'kvgate_requests_total{endpoint="chat",model="unknown",status="400"}' in metrics
    ok = post(gateway, user("still fine"))
    assert ok.status_code == 200
