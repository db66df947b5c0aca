"""Start real processes on loopback for tests: the gateway (`kvgate run`) and helpers."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from kvgate.bench.processes import free_port as free_port  # one port picker for tests and benches
from kvgate.bench.processes import stop_process


def wait_http(url: str, *, timeout_s: float = 20.0, process: subprocess.Popen[bytes] | None = None,
              ) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while (left_s := deadline - time.monotonic()) > 0:
        if process is not None and process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"process exited with {process.returncode}: {out}")
        try:
            # NOTE: each probe may take up to 10 s: a server that is up but slow to answer
            # (Next.js's dev server renders a page per request, 1.3-1.7 s on a slow 2-core
            # host) answered every 1 s probe too late and read as never up.
            if httpx.get(url, timeout=min(10.0, max(1.0, left_s))).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout_s}s: {last}")


@dataclass
class RunningGateway:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@contextlib.contextmanager
def run_gateway(config_yaml: str | None = None, *, env: dict[str, str] | None = None,
                extra_args: tuple[str, ...] = ()) -> Iterator[RunningGateway]:
    """`kvgate run` as a subprocess on a free loopback port; killed on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "kvgate", "run", "--host", "127.0.0.1", "--port", str(port),
                *extra_args]
        if config_yaml is not None:
            path = Path(tmp) / "config.yaml"
            path.write_text(config_yaml)
            args += ["-c", str(path)]
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/healthz", process=process)
            yield RunningGateway(url, process)
        finally:
            stop_process(process)


@dataclass
class RunningUpstream:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def control(self, **settings: object) -> None:
        httpx.post(self.url + "/_control", json=settings, timeout=5).raise_for_status()

    def log(self) -> dict[str, object]:
        result: dict[str, object] = httpx.get(self.url + "/_log", timeout=5).json()
        return result


@contextlib.contextmanager
def run_upstream() -> Iterator[RunningUpstream]:
    """The OpenAI-shaped test upstream (tests/support/upstream_server.py) as a process."""
    port = free_port()
    script = Path(__file__).with_name("upstream_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", process=process)
        yield RunningUpstream(url, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def reply_from_spawned(target: Callable[..., None], *args: object) -> object:
    """Run ``target(*args, replies)`` in a spawned process (as uvicorn and ``kvgate run``
    start workers: nothing inherited but the arguments) and return what it sent on
    ``replies``, a pipe's sending end; the process must exit cleanly."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, send))
    child.start()
    send.close()
    reply = receive.recv()
    child.join(30)
    assert child.exitcode == 0
    return reply
