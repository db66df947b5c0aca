"""Redis stopped and started again under a running gateway: fail_open admits without limits,
fail_closed answers 503; both count the errors, and limits hold again once Redis is back,
without a restart."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.limits.redis_control import stoppable_redis
from tests.support.processes import RunningGateway, run_gateway

CONFIG = """
server: {{ admin_key: admin-secret }}
providers: {{ mock: {{ type: mock }} }}
models:
  - name: m
    deployments: [{{ provider: mock, model: small }}]
cache: {{ exact: {{ enabled: false }} }}
tenants:
  - {{ name: t, api_keys: [key-t], rate_limit: {{ rpm: 2 }} }}
limits: {{ backend: redis, on_backend_error: {policy} }}
redis: {{ url: "{url}" }}
"""


def post(gateway: RunningGateway) -> httpx.Response:
    return httpx.post(gateway.base_url + "/chat/completions",
                      headers={"authorization": "Bearer key-t"},
                      json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def backend_errors(gateway: RunningGateway, policy: str) -> float:
    prefix = f'kvgate_limits_backend_errors_total{{on_error="{policy}",operation="admit"}}'
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_redis_outage_and_recovery(policy: str) -> None:
    with stoppable_redis() as redis_server, \
            run_gateway(CONFIG.format(policy=policy, url=redis_server.url)) as gateway:
        assert [post(gateway).status_code for _ in range(3)] == [200, 200, 429]
        redis_server.stop()
        during = [post(gateway) for _ in range(3)]
        if policy == "fail_open":
            assert [r.status_code for r in during] == [200, 200, 200]  # no limits meanwhile
        else:
            assert [r.status_code for r in during] == [503, 503, 503]
            error = during[0].json()["error"]
            assert set(error) == {"message", "type", "code", "param"}
            assert error["code"] == "limits_unavailable" and error["type"] == "server_error"
            assert during[0].headers["retry-after"] == "1"
        assert backend_errors(gateway, policy) == 3
        redis_server.start()  # an empty Redis on the same port: full buckets again
        assert [post(gateway).status_code for _ in range(3)] == [200, 200, 429]
        assert backend_errors(gateway, policy) == 3
        assert b"limits store unreachable" in gateway_log(gateway)


def gateway_log(gateway: RunningGateway) -> bytes:
    """What the gateway logged so far (it runs on, so read without waiting for EOF)."""
    stdout = gateway.process.stdout
    assert stdout is not None
    os.set_blocking(stdout.fileno(), False)
    return stdout.read() or b""
