"""Read deploy/ the way its tools would: docker compose's interpolation, Grafana's variables."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "kvgate.json"
DATASOURCE_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "kvgate.yml"

_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: Where a gateway container reads its config (the image's CMD and the compose mounts).
GATEWAY_CONFIG_PATH = "/etc/kvgate/config.yaml"


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """docker compose's ``${VAR}`` / ``${VAR:-default}`` substitution over a parsed file."""
    if isinstance(value, str):
        return _COMPOSE_VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed (YAML merge keys applied) and interpolated with ``env``
    (default: no variables set, so every ``${VAR:-default}`` takes its default)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    result: dict[str, Any] = interpolate(raw, env or {})
    return result


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (list or mapping form); bare names pass nothing."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env if "=" in item)
        return dict(pairs)  # type: ignore[arg-type]
    return {k: str(v) for k, v in env.items() if v is not None}


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """(host path resolved against deploy/, container path) for each bind mount."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def gateway_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the gateway (``kvgate run``)."""
    return {name: s for name, s in compose["services"].items()
            if s.get("command", [])[:2] == ["kvgate", "run"]}


def load_dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return result


def dashboard_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows, and panels nested in collapsed rows, flattened)."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


#: What Grafana puts in place of its variables, for running the queries outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}


def runnable_expr(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        raise AssertionError(f"a Grafana variable the tests do not know: {expr}")
    return expr


def environ_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
