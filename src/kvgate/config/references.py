"""Config errors no single field can see (duplicate model names, deployments naming a provider
that is not configured), found on the raw data so every error in a file is reported at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Where in the config a value sits, as pydantic writes it: keys and list indexes.
Location = tuple[int | str, ...]


class ReferenceProblems(ValueError):
    """Cross-field errors (every one found, each with its location), raised by ``Settings``."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        self.problems = problems
        loc, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{format_location(loc)}: {message}{more}")


def reference_problems(data: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """Errors no single field can see: duplicate model names, deployments naming a provider
    that is not configured.

    Reads the raw (unvalidated) data and skips whatever has the wrong shape, since pydantic
    reports that itself; so these are found even while other fields are invalid, and a config
    file's every error can be reported at once.
    """
    providers = data.get("providers")
    known = sorted(str(name) for name in providers) if isinstance(providers, Mapping) else None
    models = data.get("models")
    problems: list[tuple[Location, str]] = []
    seen: set[str] = set()
    for index, model in enumerate(models if isinstance(models, list) else []):
        if not isinstance(model, Mapping):
            continue
        name = model.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append((("models", index, "name"), f"duplicate model name {name!r}"))
            seen.add(name)
        deployments = model.get("deployments")
        if known is None or not isinstance(deployments, list):
            continue
        for dep_index, deployment in enumerate(deployments):
            provider = deployment.get("provider") if isinstance(deployment, Mapping) else None
            if isinstance(provider, str) and provider not in known:
                problems.append((
                    ("models", index, "deployments", dep_index, "provider"),
                    f"unknown provider {provider!r} (configured: {', '.join(known) or 'none'})",
                ))
    return problems


def format_location(loc: Location) -> str:
    """``("models", 0, "name")`` as ``models[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
