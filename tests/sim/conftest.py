"""Shared helpers for simulator tests: tiny engines, virtual-time runs, replica processes."""

from __future__ import annotations

import http.client
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from kvgate.bench.processes import free_port_block as free_port_block  # tests import it here
from kvgate.bench.processes import stop_process
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.events import CollectingSink
from kvgate.sim.profiles import Profile, get_profile
from kvgate.sim.request import EngineRequest, RequestStats
from kvgate.sim.settings import ReplicaSettings
from kvgate.vllm_compat.hashing import MMPlaceholder

LLAVA = get_profile("llava-onevision-7b-a40")
LLAMA = get_profile("llama-3.1-8b-h100")
_ids = itertools.count()


def make_engine(
    profile: Profile = LLAMA,
    num_gpu_blocks: int = 64,
    cpu_offload_blocks: int = 0,
    events: bool = False,
    **overrides: object,
) -> tuple[Engine, CollectingSink]:
    """An engine with a small pool; `overrides` replace profile fields."""
    sink = CollectingSink()
    engine = Engine(
        profile.with_overrides(**overrides) if overrides else profile,
        EngineConfig(num_gpu_blocks=num_gpu_blocks, cpu_offload_blocks=cpu_offload_blocks,
                     enable_kv_events=events),
        sink=sink,
    )
    return engine, sink


def request(
    tokens: Sequence[int],
    num_output: int = 4,
    mm: Sequence[MMPlaceholder] = (),
    output_base: int = 50_000,
) -> EngineRequest:
    return EngineRequest(
        request_id=f"r{next(_ids)}",
        prompt_token_ids=list(tokens),
        output_token_ids=[output_base + i for i in range(num_output)],
        mm_items=tuple(mm),
    )


def run_alone(engine: Engine, req: EngineRequest, at_s: float = 0.0) -> RequestStats:
    """Run one request to completion on an otherwise idle engine, in virtual time."""
    req.arrival_s = at_s
    ready = engine.frontend_ready_s(at_s, sum(item.length for item in req.mm_items))
    engine.submit(req, ready)
    now = ready
    while True:
        step, outputs = engine.step(now)
        assert step is not None, "engine stalled"
        now = step.end_s
        for output in outputs:
            if output.stats is not None and output.request_id == req.request_id:
                return output.stats


def wait_healthy(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float = 20
                 ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"replica exited with {process.returncode}")
        conn = http.client.HTTPConnection(host, port, timeout=0.5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    raise TimeoutError("replica not healthy")


@contextmanager
def replica_process(**fields: object) -> Iterator[tuple[ReplicaSettings, subprocess.Popen[bytes]]]:
    """A real replica process on free loopback ports; stopped with SIGTERM afterwards."""
    base = free_port_block(3)
    settings = ReplicaSettings(port=base, **fields)  # type: ignore[arg-type]
    if settings.kv_events_endpoint == "auto":
        settings = ReplicaSettings.from_json(settings.to_json().replace(
            '"kv_events_endpoint":"auto"', f'"kv_events_endpoint":"tcp://127.0.0.1:{base + 1}"'
        ).replace('"kv_events_replay_endpoint":"auto"',
                  f'"kv_events_replay_endpoint":"tcp://127.0.0.1:{base + 2}"'))
    process = subprocess.Popen([sys.executable, "-m", "kvgate.sim.replica", settings.to_json()])
    try:
        wait_healthy(settings.host, settings.port, process)
        yield settings, process
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def llava_replica() -> Iterator[ReplicaSettings]:
    """A LLaVA replica at time scale 20 with a small pool, shared by a test module."""
    with replica_process(profile="llava-onevision-7b-a40", time_scale=20.0, kv_blocks=4000,
                         image_tokens=1500) as (settings, _):
        yield settings
