"""Routing variants for run.py, chosen by the KVG_VARIANT environment variable, patched at
import (none is in the code):

- ``base``: as the code is;
- ``tie0``: the scorer's tie band (costs within 2 x the replica's mean TTFT error are a tie,
  broken by the most tokens held) narrowed to exact ties;
- ``tiehalf``: the band at half its width (1 x the mean error);
- ``skipwait``: a TTFT sample whose request was predicted to wait for KV space at dispatch
  (``Ledger.admission_wait_s`` > 0) is not fed to the replica's prefill fit;
- ``fcfswait``: ``Ledger.admission_wait_s`` as a FCFS queue for KV space over the requests in
  flight there (below) instead of a share of one drain;
- ``maxwait``: the larger of that FCFS wait and the share-of-a-drain price;
- ``tie2x``: the band at twice its width (4 x the mean error);
- ``spillband``: a decision that would spill (send the prompt away from the replica holding
  the most of it) is taken again with the band at twice its width, so a spill must beat the
  holder by twice the margin (2026-12-07, after the trace cells at KV/WS >= 1 showed spilled
  requests' TTFT predicted 5-15% low and a third to a half of the slowest 5%);
- ``roompin``: approximate mode; the KV room check (and the wait for KV space) counts, on
  each candidate, the prompt's matched tokens that no request in flight there pins: vLLM
  takes cached-but-free blocks a hit reuses out of the free pool at admission, so a hit
  needs room for them as well as for its uncached tokens (2026-12-07);
- ``choicehome``: precise mode, a prompt no replica holds half of: each replica that was sent
  it within the horizon counts that part as held for the choice only (the ledger books the
  true prefill), as approximate mode does without knowing of the loss.
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
elif VARIANT == "tie2x":
    ttft_scorer.TTFTScorer.choose = _with_errors(lambda e: 2.0 * e)  # type: ignore[method-assign]
elif VARIANT == "spillband":
    _wider = _with_errors(lambda e: 2.0 * e)

    def spill_band_choose(self: Any, *args: Any, **kwargs: Any) -> Any:
        rotation = self._rotation
        decision, pick = _choose(self, *args, **kwargs)
        if decision.explanation["outcome"] != "spill":
            return decision, pick
        self._rotation = rotation
        return _wider(self, *args, **kwargs)

    ttft_scorer.TTFTScorer.choose = spill_band_choose  # type: ignore[method-assign]
elif VARIANT == "roompin":
    from kvgate.routing import prefix_kv_aware

    _strategy_choose = prefix_kv_aware.PrefixKVAware._choose

    def roompin_choose(self: Any, state: Any, candidates: Any, **kwargs: Any) -> Any:
        ledger = self._scorer.ledger
        fp = state.fingerprint
        extra: dict[int, float] = {}
        for position, matched in enumerate(state.matched_tokens):
            if matched <= 0:
                continue
            pinned = fp.tokens_in_first(ledger.pinned_links(position, fp.hashes))
            if matched > pinned:
                extra[position] = matched - pinned
        saved = {p: (ledger.room[p], ledger.resident[p]) for p in extra}
        for position, tokens in extra.items():  # room and resident as if they were pinned
            ledger.room[position] -= tokens
            ledger.resident[position] += tokens
        try:
            return _strategy_choose(self, state, candidates, **kwargs)
        finally:
            for position, (room, resident) in saved.items():
                ledger.room[position], ledger.resident[position] = room, resident

    prefix_kv_aware.PrefixKVAware._choose = roompin_choose  # type: ignore[method-assign]
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
elif VARIANT in ("fcfswait", "maxwait"):
    import heapq
    import math

    def admission_wait_s(self: Any, position: int, new_tokens: float) -> float:
        """The wait for KV space as a FCFS queue: the requests in flight there finish one
        after another (decoding ones first, each after the replica's mean output at its
        current step time from its first token; waiting ones are admitted in dispatch order
        as space frees, then decode as long), and this one is admitted once all before it are
        and its tokens fit."""
        replica = self.replicas[position]
        capacity = replica.capacity_tokens
        if math.isinf(capacity):
            return 0.0
        output = replica.mean_output
        resident = self.resident[position]
        if resident + new_tokens + output <= capacity or resident <= 0:
            return 0.0
        now_s = self._clock()
        step_s = replica.step.predict(max(1, replica.batch))
        decode_s = output * step_s
        tickets = list(self._in_flight[position].values())
        # Shared prefixes stay while any sharer runs: counted as held throughout.
        held = resident - sum(t.kv_tokens for t in tickets)
        finishing: list[tuple[float, float]] = []
        waiting = []
        for ticket in tickets:
            if ticket.first_token_s is not None:
                done_s = max(now_s + step_s, ticket.first_token_s + decode_s)
                heapq.heappush(finishing, (done_s, ticket.kv_tokens))
                held += ticket.kv_tokens
            else:
                waiting.append(ticket)
        waiting.sort(key=lambda t: t.dispatched_s)
        t_s = now_s
        queue = [t.kv_tokens for t in waiting] + [new_tokens + output]
        index = 0
        for _ in range(4 * len(queue) + 4):
            while index < len(queue) and held + queue[index] <= capacity:
                if index == len(queue) - 1:
                    return t_s - now_s
                held += queue[index]
                heapq.heappush(finishing, (t_s + decode_s, queue[index]))
                index += 1
            if not finishing:
                return t_s - now_s  # nothing left to free: it is admitted (or never fits)
            t_s, freed = heapq.heappop(finishing)
            held -= freed
        return t_s - now_s

    if VARIANT == "maxwait":  # never below the share-of-a-drain price
        _share_wait = ttft_ledger.Ledger.admission_wait_s
        _fcfs_wait = admission_wait_s

        def admission_wait_s(self: Any, position: int, new_tokens: float) -> float:
            return max(_share_wait(self, position, new_tokens),
                       _fcfs_wait(self, position, new_tokens))

    ttft_ledger.Ledger.admission_wait_s = admission_wait_s  # type: ignore[method-assign]
elif VARIANT == "choicehome":
    from kvgate.routing.precise import strategy as precise_strategy

    _precise_choose = precise_strategy.PreciseKVAware.choose

    def precise_choose(self: Any, call: Any, candidates: Any) -> Any:
        """A prompt no replica holds half of but some were sent within the horizon: for the
        choice only, each such replica counts the part it was sent as held (as approximate
        mode, not knowing of the loss, does); the ledger still books the true prefill."""
        state = call.routing_state
        prompt = state.prompt_tokens
        if max(state.matched_tokens, default=0.0) < 0.5 * prompt and any(state.known_tokens):
            true_matched, true_known = state.matched_tokens, state.known_tokens
            state.matched_tokens = [m + k for m, k in zip(true_matched, true_known,
                                                          strict=True)]
            state.known_tokens = [0.0] * len(true_known)
            try:
                return _precise_choose(self, call, candidates)
            finally:
                state.matched_tokens, state.known_tokens = true_matched, true_known
        return _precise_choose(self, call, candidates)

    precise_strategy.PreciseKVAware.choose = precise_choose  # type: ignore[method-assign]
