"""`kvgate run --workers 2` with the lean server: a worker that dies is replaced, and SIGTERM to
the parent stops every worker (kvgate.workers)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from kvgate.workers import supervise
from tests.support.processes import run_gateway

CONFIG = """
server: { log_level: warning, http_server: kvgate }
providers:
  mock: { type: mock }
models:
  - name: m
    deployments: [ { provider: mock, model: x } ]
"""
WAIT_S = 30.0


def workers_of(pid: int) -> set[int]:
    """The parent's child processes that are gateway workers (not spawn's resource tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                found.add(int(child))
    return found


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def chat(url: str) -> int:
    response = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return response.status_code


def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all() -> None:
    with run_gateway(CONFIG, extra_args=("--workers", "2")) as gateway:
        parent = gateway.process.pid
        wait_for(lambda: len(workers_of(parent)) == 2, "two workers")
        first = workers_of(parent)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers_of(parent)) == 2 and victim not in workers_of(parent),
                 "a replacement worker")
        replacement = (workers_of(parent) - first).pop()
        # The replacement serves: keep asking until it has bound the port and answered.
        wait_for(lambda: chat(gateway.url) == 200, "an answer")
        assert all(chat(gateway.url) == 200 for _ in range(20))
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(WAIT_S) == 0
        for pid in first - {victim} | {replacement}:
            assert not Path(f"/proc/{pid}").exists() or b"State:\tZ" in Path(
                f"/proc/{pid}/status").read_bytes()


def exit_at_once() -> None:
    """A worker that can never start (a port taken, a config gone): it exits at once."""
    raise SystemExit(3)


def test_a_worker_that_keeps_failing_to_start_stops_the_supervisor() -> None:
    # Restarted with growing delays (0.5, 1, 2, 4 s), then given up on: status 1, no loop.
    assert supervise(1, exit_at_once, ()) == 1
