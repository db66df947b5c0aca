"""What the load generator sends (`BenchRequest`) and what it writes down (`RequestRecord`).

Bodies are encoded to bytes when a workload is built, never while the load runs: the hot loop
only hands bytes to the socket and timestamps what comes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
#: ``session`` value of a request that depends on no other.
NO_SESSION = -1


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request, ready to send.

    Requests sharing a ``session`` (>= 0) are one conversation: the load generator sends them
    in list order and never starts one before the previous has finished, in every load mode.
    """

    body: bytes
    stream: bool
    path: str = CHAT_PATH
    session: int = NO_SESSION
    #: Arrival time relative to the first request, for trace replay; None elsewhere.
    at_s: float | None = None
    #: The workload's own count of prompt tokens (filler pieces; images excluded).
    prompt_tokens_hint: int = 0
    max_output_tokens: int = 0
    #: Free-form label for analysis: a prefix group, an image, a user.
    tag: str = ""
    #: Headers for this request only, over the run's (e.g. a session key that a router's
    #: consistent hashing reads); None for none.
    headers: Mapping[str, str] | None = None


def encode_body(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request; times are seconds from the start of the run."""

    index: int
    tag: str
    session: int
    scheduled_s: float
    start_s: float = 0.0
    end_s: float = 0.0
    #: Time to the first chunk carrying content, measured by the client; None if not streamed.
    ttft_s: float | None = None
    status: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    deployment: str = ""
    cache: str = ""
    #: Prefix tokens the router found on the chosen deployment; None if the gateway didn't say.
    matched_tokens: int | None = None
    #: The same in blocks, when the gateway reported blocks rather than tokens.
    matched_blocks: int | None = None
    #: The router's verdict when it gives one (prefix_kv_aware: "hit", "cold" or "spill").
    route_outcome: str = ""
    #: The stream had no usage chunk, so ``output_tokens`` is an estimate.
    usage_missing: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def has_route_info(self) -> bool:
        return self.matched_tokens is not None or self.matched_blocks is not None

    @property
    def is_affine(self) -> bool:
        """Routed to a deployment that already held part of its prefix."""
        return bool(self.matched_tokens) or bool(self.matched_blocks)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "tag": self.tag,
            "session": self.session,
            "scheduled_ms": round(self.scheduled_s * 1000, 3),
            "start_ms": round(self.start_s * 1000, 3),
            "latency_ms": round(self.latency_s * 1000, 3),
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 3),
            "status": self.status,
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "deployment": self.deployment,
            "cache": self.cache,
            "matched_tokens": self.matched_tokens,
            "matched_blocks": self.matched_blocks,
            "route_outcome": self.route_outcome,
            "usage_missing": self.usage_missing,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        start_s = data["start_ms"] / 1000
        ttft_ms = data.get("ttft_ms")
        return cls(
            index=data["index"], tag=data.get("tag", ""), session=data.get("session", NO_SESSION),
            scheduled_s=data.get("scheduled_ms", 0.0) / 1000, start_s=start_s,
            end_s=start_s + data["latency_ms"] / 1000,
            ttft_s=None if ttft_ms is None else ttft_ms / 1000, status=data.get("status", 0),
            output_tokens=data.get("output_tokens", 0),
            prompt_tokens=data.get("prompt_tokens", 0),
            deployment=data.get("deployment", ""), cache=data.get("cache", ""),
            matched_tokens=data.get("matched_tokens"), matched_blocks=data.get("matched_blocks"),
            route_outcome=data.get("route_outcome", ""),
            usage_missing=data.get("usage_missing", False), error=data.get("error", ""),
        )
