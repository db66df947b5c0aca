"""Optional extras: which one a feature needs, and a clear error when it is not installed.

``pip install kvgate`` installs what serving needs on every request path; the rest comes in
extras (pyproject.toml): ``granian``, ``redis``, ``semantic``, ``precise``, ``sim``, ``bench``,
``all`` and ``dev``. Code that needs an extra imports it where it is used, after
``require(...)``, so a missing package is reported as the extra to install, never as a
traceback. ``needs(settings)`` lists what a config selects, so ``kvgate run`` and
``kvgate validate`` report every missing extra at once, before anything starts.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgate.config.schema import Settings

#: The tokenizer prefix for ``kvgate sim`` replicas, which needs no Hugging Face tokenizer.
_SIM_TOKENIZER_PREFIX = "kvgate-sim:"


class MissingExtra(ModuleNotFoundError):
    """``feature`` needs a package from ``extra`` that is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(message(feature, extra), name=module)
        self.feature = feature
        self.extra = extra
        self.module = module


def message(feature: str, extra: str) -> str:
    """The one sentence every missing-extra report uses."""
    return f"{feature} needs the '{extra}' extra: pip install 'kvgate[{extra}]'"


def is_installed(module: str) -> bool:
    """Whether top-level ``module`` can be imported; located, not imported (no side effects,
    and a supervising parent process stays small)."""
    return importlib.util.find_spec(module) is not None


def require(extra: str, *modules: str, feature: str) -> None:
    """Import ``modules``; MissingExtra naming ``extra`` for the first that is missing."""
    for module in modules:
        if not is_installed(module):
            raise MissingExtra(feature, extra, module)


@dataclass(frozen=True, slots=True)
class Need:
    """A feature a config selects, the extra that provides it and the modules it imports."""

    feature: str
    extra: str
    modules: tuple[str, ...]

    def missing(self) -> MissingExtra | None:
        try:
            require(self.extra, *self.modules, feature=self.feature)
        except MissingExtra as exc:
            return exc
        return None


def needs(settings: Settings) -> list[Need]:
    """What ``settings`` select beyond the core install."""
    result: list[Need] = []
    if settings.server.http_server == "granian":
        result.append(Need("server.http_server granian", "granian", ("granian",)))
    routings = [(model, settings.routing_for(model)) for model in settings.models]
    redis_settings = [
        *(f"routing.affinity_backend redis (model {model.name})"
          for model, routing in routings if routing.affinity_backend == "redis"),
        *(["limits_backend redis"] if settings.limits_backend == "redis" else []),
        *(["cache.backend redis"] if settings.cache.backend == "redis" else []),
    ]
    if redis_settings:
        result.append(Need(redis_settings[0], "redis", ("redis",)))
    precise_models = [model for model, routing in routings if routing.strategy == "precise_kv"]
    if precise_models:
        result.append(Need("routing strategy precise_kv", "precise",
                           ("zmq", "msgspec", "cbor2")))
    if any(d.tokenizer is not None and not d.tokenizer.startswith(_SIM_TOKENIZER_PREFIX)
           for model in precise_models for d in model.deployments):
        result.append(Need("precise_kv with a local tokenizer", "precise",
                           ("tokenizers", "jinja2")))
    semantic = settings.cache.semantic
    if semantic.enabled:
        result.append(Need("the semantic cache (cache.semantic)", "semantic", ("numpy",)))
        if semantic.embedder == "minilm":
            result.append(Need("the semantic cache's minilm embedder", "semantic", ("tokenizers",)))
    return result


def missing(settings: Settings) -> list[MissingExtra]:
    """One error per extra that ``settings`` need and is not installed (naming the first
    feature that needs it: installing the extra brings what the others need too)."""
    found: dict[str, MissingExtra] = {}
    for need in needs(settings):
        if need.extra not in found:
            exc = need.missing()
            if exc is not None:
                found[need.extra] = exc
    return list(found.values())


#: Which extra brings a package that serving imports only when a config selects it; for
#: reporting a ModuleNotFoundError that ``needs`` did not foresee.
_EXTRA_OF_MODULE = {
    "granian": "granian",
    "redis": "redis",
    "numpy": "semantic",
    "zmq": "precise",
    "msgspec": "precise",
    "cbor2": "precise",
    "jinja2": "precise",
    "tokenizers": "precise",
}


def explain(exc: ModuleNotFoundError, feature: str) -> MissingExtra | None:
    """``exc`` as a MissingExtra when it is an optional package's absence, else None."""
    top = (exc.name or "").partition(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    return None if extra is None else MissingExtra(feature, extra, top)

