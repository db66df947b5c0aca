"""Config loading: env expansion, validation errors that name the field and line, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.config import ConfigError, load_settings, parse_settings

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


def test_missing_env_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(VALID, env={})
    assert "UP_BASE" in str(info.value)
    assert "providers.up.api_base" in str(info.value)


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


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvgate", *args], capture_output=True,
                          text=True, timeout=30)


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("providers: {a: {type: mock}}\n"
                    "models: [{name: x, deployments: [{provider: a, model: m}]}]\n")
    result = run_cli("validate", "-c", str(good))
    assert result.returncode == 0
    assert result.stdout.startswith("valid: 1 model(s), 1 deployment(s)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {a: {type: mock}}\nmodels:\n  - name: x\n    deployments:\n"
                   "      - {provider: a, model: m, weight: 0}\n")
    result = run_cli("validate", "-c", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: models[0].deployments[0].weight" in result.stderr
    missing = run_cli("validate", "-c", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_version_command() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("kvgate ")
