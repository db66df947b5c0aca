"""Read a YAML file, expand ``${ENV}`` references, validate into :class:`Settings`.

This is the only module that reads the environment. Errors name the field (and the YAML line
when it can be found) so ``kvgate validate`` points at the fault.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kvgate.config.schema import Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field at fault."""


def _expand(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path or '<root>'}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} for an optional value)"
            )

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 1-based line."""
    line = None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else None
        else:
            # Tagged-union members appear in the location as the tag; skip them.
            continue
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_settings(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> Settings:
    """Validate YAML text into settings; raise :class:`ConfigError` naming the fault."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    expanded = _expand(raw, os.environ if env is None else env, "")
    try:
        return Settings.model_validate(expanded)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Drop discriminator tags (e.g. 'mock') that pydantic inserts into union locations.
        loc = tuple(first["loc"])
        field = _format_loc(loc) or "<root>"
        line = _line_of(root_node, loc)
        where = f"{source}:{line}" if line else source
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {field}: {first['msg']}{more}") from None


def load_settings(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from a file, or the built-in demo config when ``path`` is None."""
    if path is None:
        text = resources.files("kvgate.config").joinpath("demo.yaml").read_text()
        return parse_settings(text, env=env, source="<built-in demo config>")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_settings(text, env=env, source=str(path))


#: How ``--workers N`` child processes find the config file their parent validated.
CONFIG_FILE_ENV = "KVGATE_CONFIG_FILE"


def load_settings_from_environment() -> Settings:
    """Settings for a worker process started by ``kvgate run --workers N``."""
    return load_settings(os.environ.get(CONFIG_FILE_ENV) or None)
