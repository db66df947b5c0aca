"""deploy/Dockerfile, read without a Docker engine: it copies what the package build needs,
installs it with pip, and runs the command the compose file runs."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from kvgate.config import load_settings
from kvgate.extras import needs
from tests.deploy.stack import (
    DEPLOY,
    GATEWAY_CONFIG_PATH,
    REPO,
    bind_mounts,
    gateway_services,
    load_compose,
    service_env,
)

DOCKERFILE = DEPLOY / "Dockerfile"
IGNORE_FILE = DEPLOY / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_copies_what_the_package_build_reads_and_installs_it_with_pip() -> None:
    steps = instructions()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.")
    copied = set()
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, _dest = args.split()
            copied.update(s.rstrip("/").removeprefix("./") for s in sources)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_root = project["tool"]["setuptools"]["packages"]["find"]["where"][0]
    # setup.py: the C extensions (the affinity indexes' tables and kernel, the scorer's passes),
    # which the image must compile.
    assert {"pyproject.toml", "setup.py", project["project"]["readme"], package_root} <= copied
    for source in copied:
        assert (REPO / source).exists(), source
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs, "no pip install step"
    assert re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?", installs[0]), installs[0]
    # A compiler for the build, and a check that the extension was built (pip would quietly
    # fall back to the Python core without one).
    assert "gcc" in installs[0]
    assert re.search(r"from kvgate\.routing import _affinity_native, _chain_native, "
                     r"_fit_native, _floats_native, _shm_native; "
                     r"from kvgate\.core import _chunks_native", installs[0]), installs[0]


def installed_extras() -> set[str]:
    (install,) = [args for keyword, args in instructions()
                  if keyword == "RUN" and "pip install" in args]
    match = re.search(r"pip install \"?\.(?:\[([a-z,]+)\])?\"?", install)
    assert match, install
    return set(match.group(1).split(",")) if match.group(1) else set()


def test_installs_the_extras_every_gateway_config_needs_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    installed = installed_extras()
    assert installed <= set(project["project"]["optional-dependencies"])
    needed: set[str] = set()
    for name, service in gateway_services(load_compose()).items():
        for key, value in service_env(service).items():
            monkeypatch.setenv(key, value)
        (config,) = [src for src, target in bind_mounts(service)
                     if target == GATEWAY_CONFIG_PATH]
        service_needs = {need.extra for need in needs(load_settings(str(config)))}
        assert service_needs <= installed, (name, service_needs - installed)
        needed |= service_needs
    # precise_kv with a local tokenizer (vllm profile), Redis backends (redis profile); no
    # load generator, plots, simulator or semantic cache in the image.
    assert needed == installed == {"precise", "redis"}


def test_the_build_context_sends_only_what_is_copied() -> None:
    patterns = [p for p in IGNORE_FILE.read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src"} <= set(patterns)


def test_cmd_is_the_compose_command() -> None:
    (cmd,) = [json.loads(args) for keyword, args in instructions() if keyword == "CMD"]
    assert cmd == ["kvgate", "run", "-c", "/etc/kvgate/config.yaml", "--host", "0.0.0.0",
                   "--port", "8080"]
    for name, service in gateway_services(load_compose()).items():
        assert service["command"] == cmd, name
    (expose,) = [args for keyword, args in instructions() if keyword == "EXPOSE"]
    assert expose == "8080"


def test_runs_as_an_unprivileged_user_with_a_health_check() -> None:
    steps = instructions()
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    (health,) = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "/healthz" in health and "8080" in health
