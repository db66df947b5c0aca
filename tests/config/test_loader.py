"""Config loading: env expansion, validation errors that name the field and line, the CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from kvgate.config import (
    ConfigError,
    Settings,
    check_config,
    check_config_file,
    load_settings,
    parse_settings,
)
from tests.support.processes import run_gateway

VALID = """
providers:
  mock-a: { type: mock }
  up: { type: openai_compatible, api_base: "${UP_BASE}", api_key: "${UP_KEY:-none}" }
models:
  - name: demo
    deployments:
      - { provider: mock-a, model: m }
      - { provider: up, model: llama, cost_per_1k_input: 0.5 }
"""


def test_env_references_expand_with_defaults() -> None:
    settings = parse_settings(VALID, env={"UP_BASE": "http://127.0.0.1:9/v1"})
    up = settings.providers["up"]
    assert up.api_base == "http://127.0.0.1:9/v1"  # type: ignore[union-attr]
    assert up.api_key == "none"  # type: ignore[union-attr]
    assert settings.models[0].deployments[1].cost_per_1k_input == 0.5


def test_unset_env_variable_is_a_warning_and_expands_to_empty(
        caplog: pytest.LogCaptureFixture) -> None:
    report = check_config(VALID, env={}, source="cfg.yaml")
    assert report.errors == []
    assert [str(w) for w in report.warnings] == [
        "cfg.yaml:4: providers.up.api_base: environment variable UP_BASE is not set: using an "
        "empty value (write ${UP_BASE:-default} for another)"]
    assert report.settings is not None
    assert report.settings.providers["up"].api_base == ""  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="kvgate.config"):
        parse_settings(VALID, env={}, source="cfg.yaml")
    assert [r.getMessage() for r in caplog.records] == [str(report.warnings[0])]


def test_every_unset_variable_is_reported_with_its_line_and_field() -> None:
    text = "a: ${ONE}-${TWO:-2}-${THREE}\nb: [x, '${FOUR}']\n"
    report = check_config(text, env={"THREE": "3"}, source="f.yaml")
    assert [(w.line, w.field, w.message.split(" is not set")[0]) for w in report.warnings] == [
        (1, "a", "environment variable ONE"), (2, "b[1]", "environment variable FOUR")]


def test_validation_error_names_field_and_line() -> None:
    text = VALID.replace("cost_per_1k_input: 0.5", "cost_per_1k_input: -3")
    with pytest.raises(ConfigError) as info:
        parse_settings(text, env={"UP_BASE": "x"}, source="cfg.yaml")
    message = str(info.value)
    assert "models[0].deployments[1].cost_per_1k_input" in message
    assert message.startswith("cfg.yaml:9:")


def test_unknown_provider_reference_and_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.provider: unknown provider 'nope'"):
        parse_settings("providers: {a: {type: mock}}\nmodels: [{name: x, deployments: "
                       "[{provider: nope, model: m}]}]\n", env={})
    with pytest.raises(ConfigError, match=r"server\.prot"):
        parse_settings("server: {prot: 1}\nproviders: {a: {type: mock}}\n"
                       "models: [{name: x, deployments: [{provider: a, model: m}]}]\n", env={})


def test_collector_thresholds_are_three_positive_counts() -> None:
    tail = ("providers: {a: {type: mock}}\n"
            "models: [{name: x, deployments: [{provider: a, model: m}]}]\n")
    assert parse_settings(tail, env={}).server.gc_thresholds == (2000, 3, 10)
    assert parse_settings("server: {gc_thresholds: [700, 10, 10]}\n" + tail,
                          env={}).server.gc_thresholds == (700, 10, 10)
    for bad in ("[0, 3, 10]", "[2000, 3]", "[2000, 3, 10, 1]", "[2000, -1, 10]"):
        with pytest.raises(ConfigError, match=r"server\.gc_thresholds"):
            parse_settings(f"server: {{gc_thresholds: {bad}}}\n" + tail, env={})


def test_invalid_yaml_and_unknown_provider_type() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_settings("models: [", env={})
    with pytest.raises(ConfigError, match=r"providers\.a"):
        parse_settings("providers: {a: {type: telepathy}}\n"
                       "models: [{name: x, deployments: [{provider: a, model: m}]}]\n", env={})


def test_builtin_demo_and_example_config_are_valid() -> None:
    demo = load_settings(None, env={})
    assert [m.name for m in demo.models] == ["demo"]
    example = Path(__file__).parents[2] / "config" / "config.example.yaml"
    settings = load_settings(example, env={
        "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant", "TEAM_A_KEY": "k",
        "KVGATE_ADMIN_KEY": "admin"})
    assert settings.models
    without_secrets = check_config_file(example, env={})
    assert without_secrets.errors == [] and without_secrets.settings is not None
    assert [w.field for w in without_secrets.warnings] == [
        "providers.openai.api_key", "providers.anthropic.api_key", "tenants[0].api_keys[0]",
        "tenants[0].api_keys[1].key"]
    keys = without_secrets.settings.tenants[0].api_keys
    assert keys[0] == "" and not isinstance(keys[1], str) and keys[1].key == ""


BROKEN = """\
server:
  port: 99999
  prot: 1
providers:
  a: { type: mock, ttft_ms: -1 }
  up: { type: openai_compatible, api_base: "${UP_BASE}", read_timeout_s: 0 }
  odd: { type: telepathy }
models:
  - name: x
    deployments:
      - { provider: nope, model: m, weight: 0 }
      - { provider: a }
  - name: x
    deployments: []
"""


def test_every_error_is_reported_at_once_with_line_and_field() -> None:
    report = check_config(BROKEN, env={}, source="broken.yaml")
    assert report.settings is None
    assert [(e.line, e.field) for e in report.errors] == [
        (2, "server.port"),
        (3, "server.prot"),
        (5, "providers.a.ttft_ms"),
        # The union's tag (openai_compatible) pydantic puts in the location is left out.
        (6, "providers.up.read_timeout_s"),
        (7, "providers.odd"),
        (11, "models[0].deployments[0].weight"),
        # Cross-field errors are found even while other fields are invalid.
        (11, "models[0].deployments[0].provider"),
        (12, "models[0].deployments[1].model"),  # missing: the line of its mapping
        (13, "models[1].name"),
        (14, "models[1].deployments"),
    ]
    assert all(e.source == "broken.yaml" for e in report.errors)
    assert "unknown provider 'nope'" in report.errors[6].message
    assert "duplicate model name 'x'" in report.errors[8].message
    assert [w.field for w in report.warnings] == ["providers.up.api_base"]
    with pytest.raises(ConfigError) as info:
        parse_settings(BROKEN, env={}, source="broken.yaml")
    assert info.value.problems == report.errors
    assert str(info.value).splitlines() == [str(e) for e in report.errors]


def test_reference_errors_alone_are_all_reported() -> None:
    text = ("providers: {a: {type: mock}}\nmodels:\n"
            "  - {name: x, deployments: [{provider: b, model: m}, {provider: c, model: m}]}\n"
            "  - {name: x, deployments: [{provider: a, model: m}]}\n")
    report = check_config(text, env={}, source="r.yaml")
    assert [str(e) for e in report.errors] == [
        "r.yaml:3: models[0].deployments[0].provider: unknown provider 'b' (configured: a)",
        "r.yaml:3: models[0].deployments[1].provider: unknown provider 'c' (configured: a)",
        "r.yaml:4: models[1].name: duplicate model name 'x'",
    ]
    # Settings built in code (not from a file) still refuse them, naming the first.
    with pytest.raises(ValueError, match=r"models\[0\]\.deployments\[0\]\.provider: unknown "
                                         r"provider 'b' .*\(and 2 more\)"):
        Settings.model_validate(yaml.safe_load(text))


def test_yaml_syntax_error_and_a_top_level_that_is_not_a_mapping() -> None:
    report = check_config("models:\n  - name: x\n    deployments: [\n", env={}, source="s.yaml")
    assert len(report.errors) == 1
    assert report.errors[0].line == 4 and "invalid YAML" in report.errors[0].message
    for text in ("", "- a\n- b\n", "just text\n"):
        (error,) = check_config(text, env={}, source="t.yaml").errors
        assert str(error) == "t.yaml: the top level must be a mapping of keys"


#: Variables the example config reads, removed from the CLI's environment: it must validate
#: without secrets.
SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TEAM_A_KEY", "KVGATE_ADMIN_KEY",
           "VLLM_API_BASE")


def run_cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([sys.executable, "-m", "kvgate", *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env)


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("providers: {a: {type: mock}}\n"
                    "models: [{name: x, deployments: [{provider: a, model: m}]}]\n")
    result = run_cli("validate", "-c", str(good))
    assert result.returncode == 0
    assert result.stdout.startswith("valid: 1 model(s), 1 deployment(s)")
    assert result.stderr == ""
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {a: {type: mock}}\nmodels:\n  - name: x\n    deployments:\n"
                   "      - {provider: a, model: m, weight: 0}\n")
    result = run_cli("validate", "-c", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: models[0].deployments[0].weight" in result.stderr
    missing = run_cli("validate", "-c", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_validate_lists_every_error_and_warning(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    result = run_cli("validate", "-c", str(broken))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (f"warning: {broken}:6: providers.up.api_base: environment variable "
                        "UP_BASE is not set: using an empty value (write ${UP_BASE:-default} "
                        "for another)")
    assert len(lines) == 11 and all(line.startswith("invalid: ") for line in lines[1:])
    assert f"invalid: {broken}:2: server.port: " in lines[1]
    assert f"invalid: {broken}:14: models[1].deployments: " in lines[-1]


def test_example_config_validates_without_secrets() -> None:
    example = Path(__file__).parents[2] / "config" / "config.example.yaml"
    result = run_cli("validate", "-c", str(example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: 3 model(s), 4 deployment(s), 4 provider(s)")
    warned = [line.split(": ")[2] for line in result.stderr.splitlines()]
    assert warned == ["providers.openai.api_key", "providers.anthropic.api_key",
                      "tenants[0].api_keys[0]", "tenants[0].api_keys[1].key"]
    assert all(line.startswith(f"warning: {example}:") for line in result.stderr.splitlines())


def test_run_logs_unset_variables_once() -> None:
    config = ("providers:\n  mock: {type: mock}\n"
              "  up: {type: openai, api_key: '${KVGATE_UNSET_X}'}\n"
              "models: [{name: demo, deployments: [{provider: mock, model: m}]}]\n")
    with run_gateway(config, extra_args=("--workers", "1")) as gateway:
        assert httpx.get(gateway.url + "/healthz").status_code == 200
    assert gateway.process.stdout is not None
    output = gateway.process.stdout.read().decode()
    warning = ("providers.up.api_key: environment variable KVGATE_UNSET_X is not set: "
               "using an empty value")
    assert output.count(warning) == 1, output


def test_version_command() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("kvgate ")
    # The install built every C extension, and says so.
    assert result.stdout.splitlines()[1] == (
        "C extensions: _affinity_native built, _chain_native built, _chunks_native built, "
        "_fit_native built, _floats_native built, _shm_native built")
