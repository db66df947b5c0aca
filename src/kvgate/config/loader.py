"""Read a YAML file, expand ``${ENV}`` references, validate into :class:`Settings`.

This is the only module that reads the environment. Every problem in a file is reported at
once, each naming the file, the YAML line and the field, so ``kvgate validate`` lists them all.

``${VAR}`` takes the value of an environment variable and ``${VAR:-default}`` falls back to
``default``. An unset variable without a default expands to the empty string and is reported
as a warning (never an error), so a config that names secrets still validates where they are
not set; ``kvgate run`` logs the same warnings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kvgate.config.references import (
    Location,
    ReferenceProblems,
    format_location,
    reference_problems,
)
from kvgate.config.schema import Settings

logger = logging.getLogger("kvgate.config")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One finding in a config file: where it is (file, 1-based line, field) and what."""

    source: str
    line: int | None
    #: The field's path (``models[0].deployments[1].weight``); empty for the whole file.
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.field}: {self.message}" if self.field else (
            f"{where}: {self.message}")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every error found, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What checking a config found: the settings when it has no errors, and the warnings."""

    settings: Settings | None
    errors: list[ConfigProblem]
    warnings: list[ConfigProblem]


def _expand(value: Any, env: Mapping[str, str], loc: Location,
            unset: list[tuple[Location, str]]) -> Any:
    """``value`` with ``${VAR}`` references replaced; unset variables are noted in ``unset``."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            unset.append((loc, name))
            return ""

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, (*loc, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, (*loc, i), unset) for i, v in enumerate(value)]
    return value


def _yaml_child(node: yaml.Node | None, key: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if k.value == str(key)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def _locate(root: yaml.Node, data: Any, loc: Location) -> tuple[int | None, str]:
    """The 1-based YAML line and the field path of a pydantic error location.

    ``data`` (the expanded config) is walked beside the YAML nodes to recognise the tags that
    pydantic inserts into a tagged union's locations (``providers.up.openai_compatible.x``):
    a key the data does not have but its ``type`` names. Tags are left out of the field path.
    A location the file does not reach (a missing field) gets the line of its nearest parent.
    """
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    fields: list[int | str] = []
    for key in loc:
        is_tag = (isinstance(data, Mapping) and key not in data
                  and isinstance(key, str) and data.get("type") == key)
        if is_tag:
            continue
        fields.append(key)
        data = data.get(key) if isinstance(data, Mapping) else (
            data[key] if isinstance(data, list) and isinstance(key, int) and key < len(data)
            else None)
        node = _yaml_child(node, key)
        if node is None:
            break
        line = node.start_mark.line + 1
    return line, format_location(tuple(fields))


def _validation_problems(exc: ValidationError) -> Iterator[tuple[Location, str]]:
    for error in exc.errors():
        if isinstance((error.get("ctx") or {}).get("error"), ReferenceProblems):
            continue  # found again, all of them, by reference_problems() on the raw data
        yield tuple(error["loc"]), error["msg"]


def check_config(text: str, *, env: Mapping[str, str] | None = None,
                 source: str = "<config>") -> ConfigReport:
    """Check YAML text: every error and warning it has, and the settings when there is no error.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return ConfigReport(None, [ConfigProblem(source, line, "", f"invalid YAML: {exc}")], [])
    if node is None or not isinstance(raw, dict):
        error = ConfigProblem(source, None, "", "the top level must be a mapping of keys")
        return ConfigReport(None, [error], [])
    root: yaml.Node = node

    def problem(loc: Location, message: str) -> ConfigProblem:
        line, field = _locate(root, expanded, loc)
        return ConfigProblem(source, line, field, message)

    unset: list[tuple[Location, str]] = []
    expanded = _expand(raw, os.environ if env is None else env, (), unset)
    warnings = [
        problem(loc, f"environment variable {name} is not set: using an empty value "
                     f"(write ${{{name}:-default}} for another)")
        for loc, name in unset
    ]
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        found = [*_validation_problems(exc), *reference_problems(expanded)]
        errors = sorted((problem(loc, message) for loc, message in found),
                        key=lambda p: p.line or 0)
        return ConfigReport(None, errors, warnings)
    return ConfigReport(settings, [], warnings)


def check_config_file(path: str | Path | None, *, env: Mapping[str, str] | None = None
                      ) -> ConfigReport:
    """:func:`check_config` for a file (or the built-in demo config when ``path`` is None)."""
    if path is None:
        text = resources.files("kvgate.config").joinpath("demo.yaml").read_text()
        return check_config(text, env=env, source="<built-in demo config>")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        error = ConfigProblem(str(path), None, "", f"cannot read: {exc.strerror}")
        return ConfigReport(None, [error], [])
    return check_config(text, env=env, source=str(path))


def _settings_of(report: ConfigReport, *, log_warnings: bool = True) -> Settings:
    if log_warnings:
        for warning in report.warnings:
            logger.warning("%s", warning)
    if report.settings is None:
        raise ConfigError(report.errors)
    return report.settings


def parse_settings(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> Settings:
    """Validate YAML text into settings; log its warnings; raise :class:`ConfigError` listing
    every error."""
    return _settings_of(check_config(text, env=env, source=source))


def load_settings(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from a file, or the built-in demo config when ``path`` is None; log its
    warnings; raise :class:`ConfigError` listing every error."""
    return _settings_of(check_config_file(path, env=env))


#: How ``--workers N`` child processes find the config file their parent validated.
CONFIG_FILE_ENV = "KVGATE_CONFIG_FILE"


def load_settings_from_environment() -> Settings:
    """Settings for a worker process started by ``kvgate run --workers N``.

    The parent logged the file's warnings when it loaded it; workers do not repeat them.
    """
    report = check_config_file(os.environ.get(CONFIG_FILE_ENV) or None)
    return _settings_of(report, log_warnings=False)
