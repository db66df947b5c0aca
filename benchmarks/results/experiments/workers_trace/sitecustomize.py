"""Decision log for the workers trace (diagnostic, not part of KVGate): imported by every
Python process started with this folder on PYTHONPATH; with KVGATE_DIAG_LOG set, each gateway
worker appends to that file one JSON line per non-hit decision (the scorer's explanation and
its ledger: queues, placed tokens, capacities, prediction errors) and one per release whose
engine computed over 100 tokens beyond the estimate ("missed").

The runs before 1859435 patched ``TTFTScorer._choose`` (the method then); this file patches
``TTFTScorer.choose``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_PATH = os.environ.get("KVGATE_DIAG_LOG")


def _append(record: dict[str, Any]) -> None:
    assert _PATH is not None
    with open(_PATH, "a") as out:
        out.write(json.dumps(record) + "\n")


def _install() -> None:
    from kvgate.routing import ttft_ledger, ttft_scorer

    choose = ttft_scorer.TTFTScorer.choose
    released = ttft_ledger.Ledger.released

    def logged_choose(self: Any, candidates: Any, prompt_tokens: float, matched: Any,
                      best_match: float, **options: Any) -> Any:
        decision, pick = choose(self, candidates, prompt_tokens, matched, best_match, **options)
        if decision.explanation.get("outcome") != "hit":
            ledger = self.ledger
            _append({"pid": os.getpid(), "t": time.monotonic(), "pick": candidates[pick].id,
                     "prompt": prompt_tokens, "e": decision.explanation,
                     "queued": [r.queued for r in ledger.replicas],
                     "waiting": [r.waiting for r in ledger.replicas],
                     "decoding": [r.decoding for r in ledger.replicas],
                     "placed": list(ledger.placed.totals()),
                     "cap": [r.capacity_tokens for r in ledger.replicas],
                     "err": [r.error_s for r in ledger.replicas],
                     "scale": [r.token_scale for r in ledger.replicas],
                     "resident": list(ledger.resident), "busy": ledger.busy_replicas})
        return decision, pick

    def logged_released(self: Any, ticket: Any, output_tokens: int, usage: Any = None) -> None:
        if usage is not None and ticket.prompt_tokens > 0 and not ticket.released:
            missed = ((1.0 - usage.cached_share) * ticket.prompt_tokens
                      - ticket.uncached_tokens)
            if missed > 100:
                _append({"pid": os.getpid(), "t": time.monotonic(), "missed": missed,
                         "pos": ticket.position, "uncached": ticket.uncached_tokens,
                         "prompt": ticket.prompt_tokens, "cached_share": usage.cached_share,
                         "dispatched": ticket.dispatched_s, "first": ticket.first_token_s})
        released(self, ticket, output_tokens, usage)

    ttft_scorer.TTFTScorer.choose = logged_choose  # type: ignore[method-assign]
    ttft_ledger.Ledger.released = logged_released  # type: ignore[method-assign]


if _PATH:
    _install()
