"""The hops the ``overhead`` scenario measures, each in front of the same zero upstream.

``direct`` is the upstream itself; KVGate (``kvgate run``, one worker, exact cache off) and the
peers (nginx, LiteLLM's proxy, vllm-router; see :mod:`kvgate.bench.peers`) are started into one
exit stack by :class:`Targets`, which records a peer that cannot be installed or started
instead of failing the run. With two or more CPUs every hop runs on :data:`HOP_CPU` and the
upstream and the measuring side on :data:`CLIENT_CPU`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kvgate import __version__
from kvgate.bench.peers import (
    PEER_PACKAGES,
    PeerInstaller,
    PeerUnavailable,
    default_venvs_dir,
    ensure_debian_package,
    litellm_proxy,
    nginx_proxy,
    vllm_router,
)
from kvgate.bench.processes import LocalProcess, free_port, local_process
from kvgate.bench.rawhttp import can_pin, pinned
from kvgate.config.schema import ServerSettings

#: The hop's CPU; the upstream, wrk and the measuring client share the other one.
HOP_CPU, CLIENT_CPU = 1, 0
MODEL = "zero"


@dataclass(slots=True)
class Target:
    """A running hop in front of the zero upstream (``direct``: the upstream itself)."""

    name: str
    process: LocalProcess
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.process.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.process.pid


def hop_cpu() -> int | None:
    return HOP_CPU if can_pin() else None


def client_cpu() -> int | None:
    return CLIENT_CPU if can_pin() else None


def kvgate_config(upstream_port: int, *, deployments: int = 1,
                  strategy: str | None = None) -> dict[str, Any]:
    """One provider (one connection pool) for the zero upstream; ``deployments`` > 1 gives it
    that many deployments, ids ``zero-00`` ... With a ``strategy`` engine-metrics scraping is
    off: the zero upstream has no vLLM metrics to scrape."""
    config: dict[str, Any] = {
        "server": {"log_level": "warning", "access_log": False},
        "providers": {MODEL: {"type": "openai_compatible",
                              "api_base": f"http://127.0.0.1:{upstream_port}/v1"}},
        "models": [{"name": MODEL, "deployments": [{"provider": MODEL, "model": MODEL}]}],
        "cache": {"exact": {"enabled": False}},
    }
    if deployments > 1:
        config["models"][0]["deployments"] = [
            {"provider": MODEL, "model": MODEL, "id": f"{MODEL}-{i:02d}"}
            for i in range(deployments)]
    if strategy is not None:
        config["routing"] = {"strategy": strategy,
                             "prefix": {"engine_metrics_interval_s": 0}}
    return config


def zero_upstream(stack: contextlib.ExitStack) -> Target:
    """Start the zero-latency upstream on the client CPU into ``stack``: the ``direct``
    target (its port is the one every hop forwards to)."""
    port = free_port()
    process = stack.enter_context(local_process(
        pinned(client_cpu(), [sys.executable, "-m", "kvgate.bench.zero_upstream",
                              "--port", str(port)]),
        f"http://127.0.0.1:{port}", ready_path="/v1/models"))
    return Target("direct", process, {"notes": "the zero upstream itself"})


@contextlib.contextmanager
def _kvgate(config: dict[str, Any]) -> Iterator[LocalProcess]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kvgate-overhead-") as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_bytes(orjson.dumps(config))  # JSON is YAML
        args = pinned(hop_cpu(), [sys.executable, "-m", "kvgate", "run", "-c", str(path),
                                  "--host", "127.0.0.1", "--port", str(port)])
        with local_process(args, f"http://127.0.0.1:{port}") as gateway:
            yield gateway


def _nginx_version(executable: str) -> str:
    done = subprocess.run([executable, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().rsplit("/", 1)[-1]


class Targets:
    """Starts the targets into one exit stack, recording the peers that cannot run."""

    def __init__(self, stack: contextlib.ExitStack, upstream_port: int) -> None:
        self.stack = stack
        self.upstream_port = upstream_port
        self.running: list[Target] = []
        self.unavailable: dict[str, str] = {}
        self.installer = PeerInstaller(default_venvs_dir())

    def add(self, name: str, start: Callable[[], tuple[LocalProcess, dict[str, Any]]],
            console: Any) -> None:
        if console is not None:
            console.print(f"starting {name} ...")
        try:
            process, facts = start()
        except PeerUnavailable as exc:
            self.unavailable[name] = str(exc)
            if console is not None:
                console.print(f"[yellow]{name} unavailable[/]: {exc}")
            return
        self.running.append(Target(name, process, facts))

    def nginx(self) -> tuple[LocalProcess, dict[str, Any]]:
        executable, install_s = ensure_debian_package("nginx", "nginx")
        process = self.stack.enter_context(nginx_proxy(executable, self.upstream_port,
                                                       cpu=hop_cpu()))
        return process, {"version": _nginx_version(executable), "install_s": round(install_s, 1),
                         "notes": "1 worker, proxy_pass with upstream keepalive 64, "
                                  "proxy_buffering off"}

    def litellm(self) -> tuple[LocalProcess, dict[str, Any]]:
        install = self.installer.ensure(PEER_PACKAGES["litellm"])
        process = self.stack.enter_context(litellm_proxy(
            install, MODEL, f"http://127.0.0.1:{self.upstream_port}/v1", cpu=hop_cpu()))
        return process, {**install.describe(), "notes": "1 worker, no database or master key"}

    def vllm_router(self) -> tuple[LocalProcess, dict[str, Any]]:
        install = self.installer.ensure(PEER_PACKAGES["vllm-router"])
        process = self.stack.enter_context(vllm_router(
            install, [f"http://127.0.0.1:{self.upstream_port}"], "round_robin",
            cpu=hop_cpu()))
        return process, {**install.describe(), "notes": "policy round_robin, one worker URL"}

    def kvgate(self) -> tuple[LocalProcess, dict[str, Any]]:
        process = self.stack.enter_context(_kvgate(kvgate_config(self.upstream_port)))
        return process, {"version": __version__,
                         "http_server": ServerSettings().http_server,
                         "notes": "kvgate run, 1 worker, exact cache off"}

    def kvgate_routed(self, strategy: str, deployments: int
                      ) -> Callable[[], tuple[LocalProcess, dict[str, Any]]]:
        def start() -> tuple[LocalProcess, dict[str, Any]]:
            config = kvgate_config(self.upstream_port, deployments=deployments,
                                   strategy=strategy)
            process = self.stack.enter_context(_kvgate(config))
            return process, {"version": __version__,
                             "http_server": ServerSettings().http_server,
                             "strategy": strategy, "deployments": deployments,
                             "notes": f"kvgate run, 1 worker, exact cache off, {strategy} over "
                                      f"{deployments} deployments of one provider (one "
                                      "connection pool) on the zero upstream; engine-metrics "
                                      "scraping off"}
        return start
