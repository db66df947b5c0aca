"""Routing variants for run.py, chosen by the KVG_VARIANT environment variable, patched at
import (none is in the code):

- ``base``: as the code is;
- ``tie0``: the scorer's tie band (costs within 2 x the replica's mean TTFT error are a tie,
  broken by the most tokens held) narrowed to exact ties;
- ``tiehalf``: the band at half its width (1 x the mean error);
- ``skipwait``: a TTFT sample whose request was predicted to wait for KV space at dispatch
  (``Ledger.admission_wait_s`` > 0) is not fed to the replica's prefill fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kvgate.routing import ttft_ledger, ttft_scorer

VARIANT = os.environ.get("KVG_VARIANT", "base")
_choose = ttft_scorer.TTFTScorer.choose


def _with_errors(scale: Callable[[float], float]) -> Callable[..., Any]:
    def choose(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = [r.error_s for r in self.ledger.replicas]
        try:
            for replica in self.ledger.replicas:
                replica.error_s = scale(replica.error_s)
            return _choose(self, *args, **kwargs)
        finally:
            for replica, error in zip(self.ledger.replicas, saved, strict=True):
                replica.error_s = error
    return choose


if VARIANT == "tie0":
    ttft_scorer.TTFTScorer.choose = _with_errors(lambda e: 0.0)  # type: ignore[method-assign]
elif VARIANT == "tiehalf":
    ttft_scorer.TTFTScorer.choose = _with_errors(lambda e: 0.5 * e)  # type: ignore[method-assign]
elif VARIANT == "skipwait":
    _dispatched = ttft_ledger.Ledger.dispatched
    _observe = ttft_ledger.Ledger._observe_ttft
    _waits: dict[int, float] = {}

    def dispatched(self: Any, position: int, uncached_tokens: float, **kwargs: Any) -> Any:
        wait_s = self.admission_wait_s(position, uncached_tokens)
        ticket = _dispatched(self, position, uncached_tokens, **kwargs)
        _waits[id(ticket)] = wait_s
        return ticket

    def observe_ttft(self: Any, replica: Any, ticket: Any, ttft_s: float, now_s: float,
                     missed_tokens: float = 0.0) -> None:
        if _waits.pop(id(ticket), 0.0) > 0.0:
            return
        _observe(self, replica, ticket, ttft_s, now_s, missed_tokens)

    ttft_ledger.Ledger.dispatched = dispatched  # type: ignore[method-assign]
    ttft_ledger.Ledger._observe_ttft = observe_ttft  # type: ignore[method-assign]
