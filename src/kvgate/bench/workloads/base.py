"""The workload plug point and what every workload shares.

A workload is a frozen dataclass of its own parameters (with defaults that reproduce the shape
it is named after) whose ``build(options)`` returns the complete, ordered request list. Builds
are pure functions of (parameters, options): same seed, same bytes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from kvgate.bench.request import CHAT_PATH, NO_SESSION, BenchRequest, encode_body


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    """Options every workload takes, set from the command line's common flags."""

    model: str = "demo"
    seed: int = 0
    #: None: the workload's natural size (e.g. groups x prompts per group).
    num_requests: int | None = None
    stream: bool = True
    #: Ask vLLM-like servers to generate exactly ``max_tokens`` (they honour ``ignore_eos``).
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("num_requests must be >= 1")


class Workload(Protocol):
    """Builds a run's requests. ``name`` is the registry key; parameters are dataclass fields."""

    name: ClassVar[str]

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        """All requests of the run, in the order they are offered; deterministic."""
        ...


def chat_request(
    options: WorkloadOptions,
    messages: list[dict[str, Any]],
    max_tokens: int,
    *,
    prompt_tokens_hint: int,
    session: int = NO_SESSION,
    tag: str = "",
    at_s: float | None = None,
) -> BenchRequest:
    """A ``/v1/chat/completions`` request with the body encoded now, not at send time."""
    body: dict[str, Any] = {
        "model": options.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": options.stream,
    }
    if options.stream:
        # TTFT is measured from the stream; output tokens come from its usage chunk.
        body["stream_options"] = {"include_usage": True}
    if options.ignore_eos:
        body["ignore_eos"] = True
    return BenchRequest(
        body=encode_body(body), stream=options.stream, path=CHAT_PATH, session=session,
        at_s=at_s, prompt_tokens_hint=prompt_tokens_hint, max_output_tokens=max_tokens, tag=tag,
    )


def parameters(workload: object) -> dict[str, Any]:
    """A workload's parameters, for the result JSON."""
    return {f.name: getattr(workload, f.name) for f in dataclasses.fields(workload)}  # type: ignore[arg-type]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


W = TypeVar("W")

_PARSERS: dict[Any, Any] = {int: int, float: float, str: str, bool: _parse_bool}


def with_overrides(workload_type: type[W], overrides: dict[str, str]) -> W:
    """An instance of ``workload_type`` with fields set from ``key=value`` strings."""
    hints = typing.get_type_hints(workload_type)
    names = {f.name for f in dataclasses.fields(workload_type)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"unknown parameter {key!r} for this workload (known: {known})")
        parser = _PARSERS.get(hints[key])
        if parser is None:
            raise ValueError(f"parameter {key!r} cannot be set from the command line")
        try:
            values[key] = parser(text)
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {exc}") from None
    return workload_type(**values)
