"""Peer systems the benchmarks compare KVGate with: installed on demand, started on loopback.

Python peers go into their own virtual environments under ``benchmarks/.venvs/`` (git-ignored),
never into KVGate's: LiteLLM alone pulls in hundreds of packages whose pins would fight ours.
A venv is reused while its recorded requirement is unchanged, so only the first run pays the
install. nginx comes from the Debian package (``apt-get install``) when it is missing.

A peer that cannot be installed or started raises :class:`PeerUnavailable` with the exact error;
scenarios record it and go on with the others.

    packages = PeerInstaller(default_venvs_dir())
    install = packages.ensure(PEER_PACKAGES["vllm-router"])
    with vllm_router(install, ["http://127.0.0.1:8100"], "cache_aware") as router:
        ...  # router.url
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kvgate.bench.processes import LocalProcess, ProcessStartError, free_port, local_process
from kvgate.bench.rawhttp import pinned

_MARKER = ".kvgate-requirement"
_ERROR_TAIL_CHARS = 3000


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or started; the message is the exact error."""


@dataclass(frozen=True, slots=True)
class PeerPackage:
    """A peer shipped on PyPI: its venv name, pinned requirement and distribution name."""

    name: str
    requirement: str
    distribution: str


#: Pinned so that reruns measure the same code. LiteLLM is pinned below the releases that were
#: pulled from PyPI after a supply-chain compromise (1.82.7/1.82.8): a benchmark must not
#: install a release of a package with that history without a reviewed bump.
PEER_PACKAGES: Mapping[str, PeerPackage] = MappingProxyType({
    "vllm-router": PeerPackage("vllm-router", "vllm-router==0.1.17", "vllm-router"),
    "sglang-router": PeerPackage("sglang-router", "sglang-router==0.3.2", "sglang-router"),
    "litellm": PeerPackage("litellm", "litellm[proxy]==1.81.13", "litellm"),
})


@dataclass(frozen=True, slots=True)
class Installed:
    """A ready peer install: where its executables are, and what installing it cost."""

    name: str
    bin_dir: Path
    version: str
    #: Seconds the install took in this run; 0.0 when an earlier run's venv was reused.
    install_s: float
    reused: bool

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "install_s": round(self.install_s, 1),
                "reused_install": self.reused, "bin_dir": str(self.bin_dir)}


def default_venvs_dir() -> Path:
    """``benchmarks/.venvs`` of the checkout KVGate runs from (the working directory when
    KVGate is not installed from a checkout)."""
    checkout = Path(__file__).resolve().parents[3]
    root = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return root / "benchmarks" / ".venvs"


def _tail(text: str) -> str:
    return text[-_ERROR_TAIL_CHARS:].strip()


class PeerInstaller:
    """Creates and reuses one venv per peer under ``venvs_dir``."""

    def __init__(self, venvs_dir: Path, *, timeout_s: float = 1800.0) -> None:
        self.venvs_dir = venvs_dir
        self.timeout_s = timeout_s

    def ensure(self, package: PeerPackage) -> Installed:
        """The peer's venv, installing it first unless it already holds ``requirement``."""
        venv = self.venvs_dir / package.name
        bin_dir = venv / "bin"
        marker = venv / _MARKER
        reused = marker.is_file() and marker.read_text().strip() == package.requirement
        started_s = time.monotonic()
        if not reused:
            shutil.rmtree(venv, ignore_errors=True)
            self._run([sys.executable, "-m", "venv", str(venv)], f"{package.name}: venv")
            self._run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                       "--disable-pip-version-check", package.requirement],
                      f"{package.name}: pip install {package.requirement}")
            marker.write_text(package.requirement + "\n")
        install_s = 0.0 if reused else time.monotonic() - started_s
        version = self._run([str(bin_dir / "python"), "-c",
                             "import importlib.metadata as m, sys; "
                             "print(m.version(sys.argv[1]))", package.distribution],
                            f"{package.name}: version").strip()
        return Installed(package.name, bin_dir, version, install_s, reused)

    def _run(self, args: Sequence[str], what: str) -> str:
        try:
            done = subprocess.run(list(args), capture_output=True, text=True,
                                  timeout=self.timeout_s, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"{what}: {exc}") from None
        if done.returncode != 0:
            raise PeerUnavailable(f"{what} exited with {done.returncode}:\n"
                                  f"{_tail(done.stdout + done.stderr)}")
        return done.stdout


def ensure_debian_package(executable: str, package: str, *, timeout_s: float = 900.0,
                          ) -> tuple[str, float]:
    """(path of ``executable``, seconds spent installing ``package``: 0.0 if already there).

    Runs ``apt-get install -y`` (and ``apt-get update`` once if that fails), as root only.
    """
    found = shutil.which(executable) or shutil.which(executable, path="/usr/sbin:/sbin")
    if found:
        return found, 0.0
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise PeerUnavailable(f"{executable} is not installed and apt-get as root is not "
                              f"available to install the Debian package {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started_s = time.monotonic()
    install = ["apt-get", "install", "-y", "-q", package]
    errors = []
    for attempt in ([install], [["apt-get", "update", "-q"], install]):
        for args in attempt:
            try:
                done = subprocess.run(args, capture_output=True, text=True, env=env,
                                      timeout=timeout_s, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise PeerUnavailable(f"{' '.join(args)}: {exc}") from None
            if done.returncode != 0:
                errors.append(f"{' '.join(args)} exited with {done.returncode}:\n"
                              f"{_tail(done.stdout + done.stderr)}")
                break
        else:
            found = shutil.which(executable) or shutil.which(executable, path="/usr/sbin:/sbin")
            if found:
                return found, time.monotonic() - started_s
            errors.append(f"{package} installed but {executable} is not on PATH")
    raise PeerUnavailable("\n".join(errors))


# -- starting peers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _started(name: str, args: Sequence[str], url: str, *, ready_path: str,
             ready_timeout_s: float) -> Iterator[LocalProcess]:
    """:func:`local_process`, with a failed start reported as :class:`PeerUnavailable`."""
    stack = contextlib.ExitStack()
    try:
        process = stack.enter_context(local_process(args, url, ready_path=ready_path,
                                                    ready_timeout_s=ready_timeout_s))
    except (ProcessStartError, OSError) as exc:
        raise PeerUnavailable(f"{name} did not start: {exc}") from None
    with stack:
        yield process


def nginx_config(listen_port: int, upstream_port: int, prefix: Path) -> str:
    """nginx as a bare reverse-proxy hop: one worker, upstream keep-alive, no buffering either
    way (streams pass through as they are written, request bodies as they arrive), no access
    log."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream zero {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://zero;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            # Request bodies in memory and passed on as they arrive: by default nginx spools a
            # body over 16 KB to a temp file first (the long-prompt case's are 32 KB).
            client_body_buffer_size 1m;
            proxy_request_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_proxy(executable: str, upstream_port: int, *, cpu: int | None = None,
                ready_path: str = "/v1/models") -> Iterator[LocalProcess]:
    """nginx on a free port, proxying everything to ``127.0.0.1:upstream_port``."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kvgate-nginx-") as tmp:
        prefix = Path(tmp)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(port, upstream_port, prefix))
        args = pinned(cpu, [executable, "-p", str(prefix), "-c", str(conf),
                            "-e", str(prefix / "error.log")])
        with _started("nginx", args, f"http://127.0.0.1:{port}", ready_path=ready_path,
                      ready_timeout_s=20.0) as process:
            yield process


@contextlib.contextmanager
def litellm_proxy(install: Installed, model: str, api_base: str, *, cpu: int | None = None,
                  ready_timeout_s: float = 180.0) -> Iterator[LocalProcess]:
    """LiteLLM's proxy, one worker, serving ``model`` from the OpenAI-compatible ``api_base``.

    No database, no master key, no callbacks: the lightest set-up it has. Its model-cost map is
    read from the package, not fetched (this machine may have no internet).
    """
    port = free_port()
    config = {
        "model_list": [{"model_name": model, "litellm_params": {
            "model": f"openai/{model}", "api_base": api_base, "api_key": "unused"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    with tempfile.TemporaryDirectory(prefix="kvgate-litellm-") as tmp:
        path = Path(tmp) / "litellm.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        args = pinned(cpu, [
            "env", "LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_LOG=ERROR",
            "LITELLM_TELEMETRY=False", "DISABLE_SCHEMA_UPDATE=True",
            str(install.bin_dir / "litellm"), "--config", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1",
        ])
        with _started("litellm", args, f"http://127.0.0.1:{port}",
                      ready_path="/health/liveliness", ready_timeout_s=ready_timeout_s,
                      ) as process:
            yield process


@contextlib.contextmanager
def vllm_router(install: Installed, worker_urls: Sequence[str], policy: str, *,
                cpu: int | None = None, extra_args: Sequence[str] = (),
                ready_timeout_s: float = 60.0) -> Iterator[LocalProcess]:
    """vllm-router (Rust) in regular mode in front of ``worker_urls``."""
    port = free_port()
    args = pinned(cpu, [
        str(install.bin_dir / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *worker_urls, "--policy", policy,
        "--prometheus-port", str(free_port()), "--log-level", "warning",
        "--worker-startup-check-interval", "1", *extra_args,
    ])
    with _started(f"vllm-router ({policy})", args, f"http://127.0.0.1:{port}",
                  ready_path="/health", ready_timeout_s=ready_timeout_s) as process:
        yield process


@contextlib.contextmanager
def sglang_router(install: Installed, worker_urls: Sequence[str], policy: str, *,
                  cpu: int | None = None, extra_args: Sequence[str] = (),
                  ready_timeout_s: float = 60.0) -> Iterator[LocalProcess]:
    """SGLang's model gateway (``sglang_router.launch_router``) in front of ``worker_urls``."""
    port = free_port()
    args = pinned(cpu, [
        str(install.bin_dir / "python"), "-m", "sglang_router.launch_router",
        "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *worker_urls,
        "--policy", policy, "--prometheus-port", str(free_port()), "--log-level", "warn",
        *extra_args,
    ])
    with _started(f"sglang-router ({policy})", args, f"http://127.0.0.1:{port}",
                  ready_path="/health", ready_timeout_s=ready_timeout_s) as process:
        yield process
