"""The answer of a limit store to "may this tenant send a request now?"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Refusal = Literal["budget", "requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Admission:
    #: Why the request is refused; None when it is admitted.
    refused: Refusal | None
    #: When a refused request could succeed: the bucket's refill, or the budget window's end.
    retry_after_s: float
    #: Bucket levels after this admission; None where the tenant has no such limit.
    requests_left: float | None
    tokens_left: float | None
    spent_usd: float
