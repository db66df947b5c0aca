"""Through the real gateway (``kvgate run``): auth runs before parsing, and parts OpenAI accepts
besides text and images pass the parser."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import RunningGateway, run_gateway

CONFIG = """
providers:
  mock: { type: mock }
models:
  - name: demo
    deployments: [ { provider: mock, model: m } ]
tenants:
  - { name: team-a, api_keys: [sk-a] }
"""

AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    with run_gateway(CONFIG) as running:
        yield running


def post(gateway: RunningGateway, body: bytes, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=headers,
                      timeout=10)


@pytest.mark.parametrize("body", [
    b"{not json",
    b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "demo", "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}',
])
def test_no_key_is_401_whatever_the_body(gateway: RunningGateway, body: bytes) -> None:
    for key in (None, "sk-wrong"):
        response = post(gateway, body, key)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert set(error) == {"message", "type", "code", "param"}


def test_with_a_key_the_body_is_checked(gateway: RunningGateway) -> None:
    broken = post(gateway, b"{not json", "sk-a")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    bogus = post(gateway, b'{"model": "demo", "messages": [{"role": "user", "content": '
                          b'[{"type": "bogus"}]}]}', "sk-a")
    assert bogus.status_code == 400
    assert bogus.json()["error"]["param"] == "messages[0].content[0].type"


def test_input_audio_parts_pass_parsing(gateway: RunningGateway) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-a"},
        json={"model": "demo", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is said?"}, AUDIO]}]},
        timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
