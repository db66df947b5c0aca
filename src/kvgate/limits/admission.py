"""What a limit store is asked ("may this request go, at this worst-case cost?") and answers.

Money crosses the store boundary in nano-USD integers (``*_nusd``): sums of reservations and
charges stay exact however many are added and released, where floats would drift by a few
ulps per operation and leave a window's "outstanding" a hair above zero forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Refusal = Literal["budget", "requests", "tokens"]

NUSD_PER_USD = 1_000_000_000


def to_nusd(usd: float) -> int:
    return round(usd * NUSD_PER_USD)


def to_usd(nusd: int | float) -> float:
    return nusd / NUSD_PER_USD


@dataclass(frozen=True, slots=True)
class Estimate:
    """A request's worst case: prompt + output-bound tokens, priced at the dearest deployment
    it may be routed or failed over to."""

    tokens: int
    nusd: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an admitted request holds until it is settled.

    ``id`` is empty when nothing is held in the store (it was unreachable and limits failed
    open): settling it only charges the real cost.
    """

    id: str
    nusd: int
    tokens: int
    #: The budget window the reservation belongs to, and its end (Unix s); its real cost is
    #: charged to that window even when it is settled after the window ended.
    window: str
    window_ends_s: float


NO_RESERVATION = Reservation("", 0, 0, "", 0.0)


@dataclass(frozen=True, slots=True)
class Admission:
    #: Why the request is refused; None when it is admitted.
    refused: Refusal | None
    #: When a refused request could succeed: the bucket's refill, or the budget window's end.
    retry_after_s: float
    #: Bucket levels after this admission; None where the policy has no such limit.
    requests_left: float | None
    tokens_left: float | None
    spent_usd: float
    #: Held by requests admitted and not yet settled (this one included when admitted).
    reserved_usd: float = 0.0
    #: Set when admitted: hand it back to ``LimitStore.settle`` exactly once.
    reservation: Reservation = NO_RESERVATION


@dataclass(frozen=True, slots=True)
class Usage:
    """A policy's figures right now, for ``/admin/tenants/{name}``."""

    window: str
    window_ends_s: float
    spent_usd: float
    reserved_usd: float
    reservations: int
    requests_left: float | None
    tokens_left: float | None
