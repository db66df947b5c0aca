"""``pip install .`` (no extras) into a fresh venv serves the demo, and every command or config
that needs an extra names it instead of failing with a traceback.

The venv is built from a copy of what the package build reads (pyproject.toml, README.md,
src/), so the build leaves nothing in the working tree; pip fetches the core dependencies
from the package registry as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kvgate.bench.processes import stop_process
from tests.support.processes import free_port, wait_http

#: Building the venv (about 10 s here) is part of the first test's time.
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
#: Not core: the load generator's client, progress tables and plots (bench), the semantic
#: cache's arrays, Redis, the other ASGI server, and what precise_kv and the simulator need.
NOT_CORE = ("aiohttp", "rich", "matplotlib", "numpy", "redis", "granian", "zmq", "msgspec",
            "cbor2", "tokenizers")
CORE = ("uvicorn", "uvloop", "httptools", "orjson", "pydantic", "yaml", "prometheus_client",
        "swagger_ui_bundle", "blake3", "xxhash")


@dataclass(frozen=True)
class CoreVenv:
    root: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def kvgate(self) -> Path:
        return self.root / "bin" / "kvgate"

    @property
    def env(self) -> dict[str, str]:
        # Nothing from this test process's environment may point back at the repository.
        env = {k: v for k, v in os.environ.items()
               if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> CoreVenv:
    root = tmp_path_factory.mktemp("packaging")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, project / name)
    # The C extension is compiled by this install, not copied from the working tree's build.
    shutil.copytree(REPO / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    venv = CoreVenv(root / "venv", root)
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(project)],
        cwd=root, env=venv.env, capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    return venv


def test_the_core_install_has_no_bench_redis_numpy_or_second_http_client(
    core: CoreVenv,
) -> None:
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None "
             "for m in sys.argv[1:]}))")
    result = core.run(core.python, "-c", probe, *NOT_CORE, *CORE, "kvgate")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [m for m in NOT_CORE if found[m]] == []
    assert [m for m in (*CORE, "kvgate") if not found[m]] == []
    # The installed package is used, not the repository's sources.
    where = core.run(core.python, "-c", "import kvgate; print(kvgate.__file__)")
    assert str(core.root) in where.stdout, where.stdout
    # The install compiled the C extensions: the affinity index uses its C core, the scorer
    # its C passes, the workers' shared index its C kernel, the fingerprint its C loop.
    native = core.run(core.python, "-c",
                      "from kvgate.routing.affinity import MemoryAffinityIndex as M; "
                      "print(type(M(max_blocks_per_deployment=1, ttl_s=1).core).__name__)")
    assert native.stdout.strip() == "NativeAffinityCore", native.stdout + native.stderr
    others = core.run(core.python, "-c",
                      "from kvgate.routing import affinity_shm, fingerprint, floats; "
                      "print(floats.NATIVE_AVAILABLE, affinity_shm.NATIVE_AVAILABLE, "
                      "fingerprint.NATIVE_CHAIN)")
    assert others.stdout.strip() == "True True True", others.stdout + others.stderr


@pytest.fixture(scope="module")
def gateway(core: CoreVenv) -> Iterator[str]:
    """``kvgate run`` (the built-in demo) from the core venv."""
    port = free_port()
    process = subprocess.Popen(
        [str(core.kvgate), "run", "--host", "127.0.0.1", "--port", str(port)],
        cwd=core.workdir, env=core.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", process=process, timeout_s=30)
        yield url
    finally:
        stop_process(process)


def test_kvgate_run_serves_the_demo_with_the_exact_cache(gateway: str) -> None:
    body = {"model": "demo", "temperature": 0,
            "messages": [{"role": "user", "content": "What does a KV cache hold?"}]}
    with httpx.Client(base_url=gateway, timeout=10) as client:
        first = client.post("/v1/chat/completions", json=body)
        second = client.post("/v1/chat/completions", json=body)
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        docs = client.get("/docs")
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["choices"][0]["message"]["content"]
    assert answer["kvgate"]["cache"] == "miss"
    # The exact cache (on by default) works without numpy, which only the semantic cache needs.
    assert second.headers["x-kvgate-cache"] == "exact"
    assert second.json()["choices"] == answer["choices"]
    assert streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("command", ["bench", "sim"])
def test_a_command_without_its_extra_names_the_extra(core: CoreVenv, command: str) -> None:
    result = core.run(core.kvgate, command)
    assert result.returncode == 2
    assert result.stderr == (
        f"kvgate {command} needs the '{command}' extra: pip install 'kvgate[{command}]'\n")
    assert "Traceback" not in result.stdout + result.stderr


SEMANTIC_REDIS_GRANIAN = """\
server: { http_server: granian }
providers:
  mock: { type: mock }
models:
  - name: demo
    deployments: [{ provider: mock, model: m }]
limits_backend: redis
cache:
  backend: redis
  semantic: { enabled: true, embedder: minilm }
"""

PRECISE = """\
providers:
  vllm: { type: openai_compatible, api_base: "http://127.0.0.1:9/v1" }
models:
  - name: demo
    deployments:
      - provider: vllm
        model: m
        tokenizer: /nonexistent/tokenizer
        kv_events: { endpoint: "tcp://127.0.0.1:9" }
routing: { strategy: precise_kv }
"""


@pytest.mark.parametrize(("config", "extras"), [
    pytest.param(SEMANTIC_REDIS_GRANIAN, ["granian", "redis", "semantic"], id="semantic-redis"),
    pytest.param(PRECISE, ["precise"], id="precise"),
])
def test_a_config_that_selects_a_missing_extra_is_refused_naming_it(
    core: CoreVenv, config: str, extras: list[str],
) -> None:
    path = core.workdir / "config.yaml"
    path.write_text(config)
    validate = core.run(core.kvgate, "validate", "-c", path)
    run = core.run(core.kvgate, "run", "-c", path, "--port", str(free_port()))
    for result, code in ((validate, 1), (run, 2)):
        assert result.returncode == code, result.stderr
        lines = result.stderr.splitlines()
        assert "Traceback" not in result.stderr
        # One line per missing extra, each saying how to install it.
        assert [line.rsplit("'kvgate[", 1)[1].rstrip("]'") for line in lines] == extras
        assert all("extra: pip install 'kvgate[" in line for line in lines)
