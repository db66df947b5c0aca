"""Two real vLLM replicas (CPU build, tiny LLaVA) behind one `kvgate run`, shared by this folder.

The replicas serve text and images with one model (LLaVA's language model is the Llama decoder),
so a single pair of start-ups (about a minute on two cores) covers every test. The gateway
serves one logical model per routing strategy over the same two replicas:

- ``kv``: prefix_kv_aware;  ``rr``: round_robin;  ``precise``: precise_kv (live KV events).

If vLLM's CPU build cannot be installed or started here, every test in this folder errors with
the reason: these tests are never skipped (CI runs `python -m kvgate.testing.vllm setup` first,
so the venv and models are cached). Deselect them locally with ``-m "not realvllm"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvgate.testing.vllm import (
    ReplicaFleet,
    ReplicaOptions,
    VllmEnvironment,
    dump_config,
    gateway_config,
    prepare,
)
from tests.realvllm.client import RealGateway
from tests.support.processes import run_gateway

#: Small on purpose: about six image prompts fit per replica, so evictions are easy to cause.
KV_CACHE_TOKENS = 4096
STRATEGIES = {"kv": "prefix_kv_aware", "rr": "round_robin", "precise": "precise_kv"}
#: Set-up figures, printed at the end of the run (CI logs keep them).
FIGURES = pytest.StashKey[dict[str, Any]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "realvllm: needs real vLLM replicas (CPU build)")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, None)
    if figures:
        terminalreporter.write_line(f"real vLLM harness: {figures}")


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> dict[str, Any]:
    return pytestconfig.stash.setdefault(FIGURES, {})


@pytest.fixture(scope="session")
def vllm_env(figures: dict[str, Any]) -> VllmEnvironment:
    started = time.monotonic()
    env = prepare(("vision",))
    figures["prepare_s"] = round(time.monotonic() - started, 2)
    return env


class Fleet:
    """The replicas, restarted lazily when a test killed one (failover tests do)."""

    def __init__(self, fleet: ReplicaFleet) -> None:
        self.fleet = fleet

    @property
    def replicas(self) -> list[Any]:
        return self.fleet.replicas

    def ensure_alive(self) -> None:
        for replica in self.fleet.replicas:
            if not replica.is_alive():
                self.fleet.restart(replica.index)


@pytest.fixture(scope="session")
def fleet(vllm_env: VllmEnvironment, figures: dict[str, Any]) -> Iterator[Fleet]:
    started = time.monotonic()
    with ReplicaFleet(vllm_env.venv, vllm_env.models["vision"], count=2,
                      options=ReplicaOptions(kv_cache_tokens=KV_CACHE_TOKENS)) as fleet:
        figures["replicas_start_s"] = round(time.monotonic() - started, 1)
        figures["rss_gib"] = [round(r.rss_bytes() / 2**30, 2) for r in fleet.replicas]
        yield Fleet(fleet)
        figures["rss_gib_end"] = [round(r.rss_bytes() / 2**30, 2) for r in fleet.replicas]


@pytest.fixture(scope="session")
def gateway_process(fleet: Fleet) -> Iterator[RealGateway]:
    config = gateway_config(
        fleet.fleet, STRATEGIES,
        routing={"max_attempts": 3, "health_check_interval_s": 1.0,
                 "breaker": {"consecutive_failures": 2, "cooldown_s": 5.0},
                 "precise": {"replay_timeout_s": 1.0, "idle_probe_s": 1.0}},
    )
    with run_gateway(dump_config(config)) as running:
        gateway = RealGateway(running, fleet.fleet)
        yield gateway
        gateway.close()


@pytest.fixture()
def gateway(gateway_process: RealGateway, fleet: Fleet) -> RealGateway:
    fleet.ensure_alive()
    return gateway_process
