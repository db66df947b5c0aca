"""deploy/Dockerfile, read without a Docker engine: it copies what the package build needs,
installs it with pip, and runs the command the compose file runs."""

from __future__ import annotations

import json
import re
import tomllib

from tests.deploy.stack import DEPLOY, REPO, gateway_services, load_compose

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
    assert {"pyproject.toml", project["project"]["readme"], package_root} <= copied
    for source in copied:
        assert (REPO / source).exists(), source
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert installs, "no pip install step"
    assert re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?", installs[0]), installs[0]
    # precise_kv with a local tokenizer (the vllm profile) needs the `precise` extra.
    assert "precise" in installs[0]
    assert "precise" in project["project"]["optional-dependencies"]


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
