"""A simulated vLLM fleet with a gateway in front, for scenarios that compare routing.

    spec = FleetSpec(replicas=2, kv_blocks=2000, time_scale=4.0)
    with sim_fleet(spec) as fleet, fleet_gateway(fleet, ["round_robin", "prefix_kv_aware"]) as gw:
        for strategy in ("round_robin", "prefix_kv_aware"):
            fleet.flush()                      # every strategy starts from cold caches
            before = fleet.counters()
            run_benchmark(gw.url, requests_for(model=strategy), load)
            engine = [b.delta(a) for a, b in zip(before, fleet.counters(), strict=True)]

Each replica is a ``kvgate sim`` replica process on a free loopback port. The gateway is one
``kvgate run`` serving one logical model per strategy, named after the strategy, each over
the same replicas (deployment ids ``replica-0``, ...), with its exact cache off so every request
reaches the fleet. Models keep separate routing state (affinity index, in-flight counts), so
running strategies one after another through one gateway compares like separate gateways
would, without paying a gateway start per strategy. Counters come from the replicas' own
``/metrics`` (vLLM names, simulated seconds), read before and after a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvgate.bench.engine_counters import EngineCounters, read_counters
from kvgate.bench.processes import LocalProcess, ProcessStartError, free_port, local_gateway
from kvgate.sim.fleet import Fleet, FleetError
from kvgate.sim.profiles import DEFAULT_PROFILE, get_profile
from kvgate.sim.settings import ReplicaSettings

_FLUSH_ATTEMPTS = 50
_FLUSH_RETRY_S = 0.1


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What ``kvgate sim`` flags the fleet runs with."""

    replicas: int = 2
    profile: str = DEFAULT_PROFILE
    #: GPU KV blocks per replica (``--kv-blocks``); None = the profile's.
    kv_blocks: int | None = None
    #: ``--time-scale``: the replicas run this many times faster than the modelled GPU.
    time_scale: float = 1.0
    image_tokens: int | None = None

    def describe(self) -> dict[str, Any]:
        profile = get_profile(self.profile)
        return {**dataclasses.asdict(self), "served_model_name": profile.served_model_name,
                "block_size": profile.block_size}

    def command(self) -> str:
        """The equivalent ``kvgate sim`` command line."""
        parts = [f"kvgate sim --replicas {self.replicas} --profile {self.profile}",
                 f"--time-scale {self.time_scale:g}"]
        if self.kv_blocks is not None:
            parts.append(f"--kv-blocks {self.kv_blocks}")
        if self.image_tokens is not None:
            parts.append(f"--image-tokens {self.image_tokens}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class RunningFleet:
    spec: FleetSpec
    #: Replica root URLs (``http://127.0.0.1:PORT``), in replica order.
    urls: tuple[str, ...]

    @property
    def deployment_ids(self) -> list[str]:
        return [f"replica-{i}" for i in range(len(self.urls))]

    def counters(self, *, timeout_s: float = 10.0) -> list[EngineCounters]:
        """Every replica's counters now, in replica order."""
        return read_counters(self.urls, timeout_s=timeout_s)

    def flush(self, *, timeout_s: float = 10.0) -> None:
        """Empty every replica's prefix and encoder caches (vLLM's ``/reset_prefix_cache``).

        A replica refuses while requests still hold blocks (a client that timed out may leave
        one finishing), so this retries for a few seconds before giving up.
        """
        for url in self.urls:
            for attempt in range(_FLUSH_ATTEMPTS):
                request = urllib.request.Request(url + "/reset_prefix_cache", method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=timeout_s):
                        break
                except urllib.error.HTTPError as exc:
                    if exc.code != 400 or attempt == _FLUSH_ATTEMPTS - 1:
                        raise RuntimeError(f"{url}: cache reset failed ({exc.code})") from None
                    time.sleep(_FLUSH_RETRY_S)


@contextlib.contextmanager
def running_replicas(settings: Sequence[ReplicaSettings], *, ready_timeout_s: float = 60.0,
                     ) -> Iterator[Sequence[ReplicaSettings]]:
    """``kvgate sim`` replica processes, ready when the block starts, stopped when it exits."""
    fleet = Fleet(list(settings))
    try:
        fleet.start(timeout_s=ready_timeout_s)
    except FleetError as exc:
        raise ProcessStartError(f"kvgate sim: {exc}") from None
    try:
        yield settings
    finally:
        fleet.stop()


@contextlib.contextmanager
def sim_fleet(spec: FleetSpec, *, ready_timeout_s: float = 60.0) -> Iterator[RunningFleet]:
    """Start the replicas on free loopback ports; stop them when the block exits."""
    settings = [
        ReplicaSettings(index=i, port=free_port(), profile=spec.profile, kv_blocks=spec.kv_blocks,
                        time_scale=spec.time_scale, image_tokens=spec.image_tokens)
        for i in range(spec.replicas)
    ]
    with running_replicas(settings, ready_timeout_s=ready_timeout_s):
        yield RunningFleet(spec, tuple(s.url for s in settings))


def gateway_config(fleet: RunningFleet, strategies: Sequence[str],
                   prefix: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A gateway config with one model per strategy (named after it), each on every replica.

    ``prefix`` sets ``routing.prefix`` (prefix_kv_aware's settings). One attempt per request:
    a failed request counts as failed instead of being retried elsewhere behind the figures.
    """
    served = get_profile(fleet.spec.profile).served_model_name
    routing: dict[str, Any] = {"max_attempts": 1}
    if prefix:
        routing["prefix"] = dict(prefix)
    deployments = [{"provider": name, "model": served, "id": name}
                   for name in fleet.deployment_ids]
    return {
        "server": {"log_level": "warning", "access_log": False},
        "providers": {name: {"type": "openai_compatible", "api_base": url + "/v1"}
                      for name, url in zip(fleet.deployment_ids, fleet.urls, strict=True)},
        "models": [{"name": strategy, "routing": {"strategy": strategy},
                    "deployments": deployments} for strategy in strategies],
        "routing": routing,
        "cache": {"exact": {"enabled": False}},
    }


@contextlib.contextmanager
def fleet_gateway(fleet: RunningFleet, strategies: Sequence[str], *,
                  prefix: Mapping[str, Any] | None = None,
                  extra_args: Sequence[str] = ()) -> Iterator[LocalProcess]:
    """``kvgate run`` in front of ``fleet`` (see :func:`gateway_config`)."""
    with tempfile.TemporaryDirectory(prefix="kvgate-fleet-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        # JSON is YAML: no YAML writer needed.
        path.write_text(json.dumps(gateway_config(fleet, strategies, prefix), indent=2))
        with local_gateway(path, extra_args=extra_args) as gateway:
            yield gateway
