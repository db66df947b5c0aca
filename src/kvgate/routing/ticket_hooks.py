"""The attempt-following hooks both KV-aware strategies share (``prefix_kv_aware``,
``precise_kv``): an attempt's first token and its end close the ledger ticket its dispatch
opened, queued on the strategy's write-behind (:mod:`kvgate.routing.write_behind`) with the
time each happened."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from kvgate.routing.write_behind import WriteBehind

if TYPE_CHECKING:
    from kvgate.core.call import Call


class _Ticketed(Protocol):
    """A strategy's per-request state: the current attempt's ticket, once dispatched."""

    ticket: Ticket | None


class TicketHooks:
    """``on_first_token`` / ``on_released`` over ``call.routing_state.ticket``; list it before
    :class:`~kvgate.routing.base.StrategyDefaults` among the bases."""

    bookkeeping: WriteBehind
    _clock: Callable[[], float]
    _scorer: TTFTScorer

    def on_first_token(self, call: Call, deployment: Deployment) -> None:
        state: _Ticketed | None = call.routing_state
        if state is not None:
            self.bookkeeping(self._first_token, state, self._clock())

    def on_released(self, call: Call, deployment: Deployment, output_tokens: int,
                    usage: EngineUsage | None = None) -> None:
        state: _Ticketed | None = call.routing_state
        if state is not None:
            self.bookkeeping(self._released, state, output_tokens, usage, self._clock())

    def _first_token(self, state: _Ticketed, now_s: float) -> None:
        if state.ticket is not None:
            self._scorer.ledger.first_token(state.ticket, now_s)

    def _released(self, state: _Ticketed, output_tokens: int, usage: EngineUsage | None,
                  now_s: float) -> None:
        if state.ticket is not None:
            self._scorer.ledger.released(state.ticket, output_tokens, usage, now_s)
