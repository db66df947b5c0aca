"""`kvgate run --workers 2`: both workers route a repeated prompt to where it was first served.

Which worker answers a connection is the kernel's choice; the test finds out from /proc (the
process holding the server side of the connection) and keeps opening connections until each
worker has answered repeats, so it proves sharing rather than assuming both took part.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvgate.config.schema import Settings
from kvgate.server import (
    AFFINITY_SEGMENT_ENV,
    per_process_state_warnings,
    with_affinity_segment,
    worker_affinity_segment,
)
from tests.support.processes import RunningGateway, run_gateway

CONFIG = """
server: { log_level: warning, access_log: false }
providers:
  gpu0: { type: mock }
  gpu1: { type: mock }
models:
  - name: m
    routing: { strategy: prefix_kv_aware }
    deployments:
      - { provider: gpu0, model: x, id: gpu-0 }
      - { provider: gpu1, model: x, id: gpu-1 }
cache: { exact: { enabled: false } }
"""
#: Connections tried before giving up on seeing both workers answer (each is one request).
MAX_CONNECTIONS = 300


def prompt(number: int) -> bytes:
    words = " ".join(f"conversation {number} line {i} with some context" for i in range(60))
    return json.dumps({"model": "m", "max_tokens": 4,
                       "messages": [{"role": "user", "content": words}]}).encode()


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def server_socket_inode(gateway_port: int, client_port: int) -> str:
    """The inode of the gateway's end of the loopback connection from ``client_port``."""
    wanted = (f"{gateway_port:04X}", f"{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1].split(":")[1], fields[2].split(":")[1]) == wanted:
            return fields[9]
    raise LookupError(f"no connection {gateway_port} <- {client_port}")


def answering_worker(workers: list[int], inode: str) -> int:
    target = f"socket:[{inode}]"
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue  # closed meanwhile
    raise LookupError(f"no worker holds {target}")


def exchange(gateway: RunningGateway, workers: list[int], body: bytes,
             then_get: str | None = None) -> tuple[int, http.client.HTTPResponse, Any]:
    """(answering worker pid, the POST's response, the JSON of ``then_get`` asked on the same
    connection, so of the same worker), over a fresh connection."""
    port = int(gateway.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/v1/chat/completions", body,
                           {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert connection.sock is not None
        worker = answering_worker(
            workers, server_socket_inode(port, connection.sock.getsockname()[1]))
        followed = None
        if then_get is not None:
            connection.request("GET", then_get)
            followed = json.loads(connection.getresponse().read())
        return worker, response, followed
    finally:
        connection.close()


def send(gateway: RunningGateway, workers: list[int], body: bytes) -> tuple[int, str, str]:
    """(answering worker pid, deployment, route outcome), over a fresh connection."""
    worker, response, _ = exchange(gateway, workers, body)
    return (worker, response.headers["x-kvgate-deployment"],
            response.headers["x-kvgate-route-outcome"])


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[RunningGateway, list[int]]]:
    with run_gateway(CONFIG, extra_args=("--workers", "2")) as gateway:
        yield gateway, children(gateway.process.pid)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_repeats_go_where_the_prompt_was_first_served_whichever_worker_answers(
        two_workers: tuple[RunningGateway, list[int]]) -> None:
    gateway, pids = two_workers
    workers = [pid for pid in pids if Path(f"/proc/{pid}/cmdline").read_bytes()]
    home: dict[int, str] = {}
    answered_repeats: dict[int, set[int]] = {}
    for number in range(4):
        _, home[number], outcome = send(gateway, workers, prompt(number))
        assert outcome == "cold"
    for attempt in range(MAX_CONNECTIONS):
        number = attempt % len(home)
        worker, deployment, outcome = send(gateway, workers, prompt(number))
        assert (deployment, outcome) == (home[number], "hit")
        answered_repeats.setdefault(number, set()).add(worker)
        if all(len(answered) == 2 for answered in answered_repeats.values()):
            break
    # Each prompt's repeats were answered by both workers, always on its first deployment.
    assert all(len(answered) == 2 for answered in answered_repeats.values())


def placed_seen(gateway: RunningGateway, workers: list[int], body: bytes
                ) -> tuple[int, dict[str, float]]:
    """(worker, its placed tokens per deployment) after it routed ``body``."""
    worker, _, stats = exchange(gateway, workers, body, then_get="/admin/stats")
    deployments = stats["models"][0]["deployments"]
    return worker, {d["id"]: d["kv_cache"]["placed_tokens"] for d in deployments}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_both_workers_count_the_kv_either_of_them_placed(
        two_workers: tuple[RunningGateway, list[int]]) -> None:
    gateway, pids = two_workers
    workers = [pid for pid in pids if Path(f"/proc/{pid}/cmdline").read_bytes()]
    for number in range(100, 112):  # cold prompts, answered by whichever worker
        send(gateway, workers, prompt(number))
    time.sleep(0.2)  # past a refresh interval: each worker's next decision reads the board
    seen: dict[int, dict[str, float]] = {}
    for _ in range(MAX_CONNECTIONS):
        worker, placed = placed_seen(gateway, workers, prompt(100))  # a repeat: places nothing
        seen[worker] = placed
        if len(seen) == 2:
            break
    assert len(seen) == 2
    first, second = seen.values()
    # Each worker's ledger holds every placement, its own and the other's.
    assert first == second
    assert sum(first.values()) >= 12 * 500  # twelve ~540-token prompts at least
    assert all(tokens > 0 for tokens in first.values())


def settings(routing: dict[str, object]) -> Settings:
    return Settings.model_validate({
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "routing": {"strategy": "prefix_kv_aware"},
                    "deployments": [{"provider": "mock", "model": "x"}]}],
        "routing": routing,
        "cache": {"exact": {"enabled": False}},
    })


def test_several_workers_get_one_segment_named_in_the_environment() -> None:
    with worker_affinity_segment(settings({}), 2) as segment:
        assert segment is not None and os.environ[AFFINITY_SEGMENT_ENV] == segment
        worker_settings = with_affinity_segment(settings({}), segment)
        assert worker_settings.routing_for(worker_settings.models[0]).affinity_segment == segment
    assert AFFINITY_SEGMENT_ENV not in os.environ
    assert not Path("/dev/shm", segment).exists()  # unlinked once the workers are done


def test_one_worker_or_another_backend_needs_no_segment() -> None:
    with worker_affinity_segment(settings({}), 1) as segment:
        assert segment is None
    for backend in ("memory", "redis"):
        with worker_affinity_segment(settings({"affinity_backend": backend}), 2) as segment:
            assert segment is None


def test_an_explicit_memory_index_with_several_workers_is_called_out() -> None:
    warnings = per_process_state_warnings(settings({"affinity_backend": "memory"}), 2)
    assert any("each learns its own prefix affinities for m" in w for w in warnings)
    assert per_process_state_warnings(settings({}), 2) == []


def test_strategies_without_an_index_get_no_segment() -> None:
    plain = Settings.model_validate({
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "deployments": [{"provider": "mock", "model": "x"}]}],
    })  # round_robin: nothing to share
    with worker_affinity_segment(plain, 2) as segment:
        assert segment is None
    assert not any("affinit" in w for w in per_process_state_warnings(plain, 2))
