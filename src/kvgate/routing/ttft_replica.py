"""One replica as the TTFT ledger (:mod:`kvgate.routing.ttft_ledger`) keeps it, and one
dispatched attempt's entry in it."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.routing.calibration import LineFit

#: The decode step's prior growth per sequence in the batch, as a share of the prior step.
_PER_SEQUENCE_SHARE = 0.02
#: Batch sizes apart that the step prior is worth ``prior_weight`` samples at.
_BATCH_SPAN = 8.0


@dataclass(slots=True)
class Ticket:
    """One dispatched attempt, from ``dispatched`` to ``released``."""

    position: int
    uncached_tokens: float
    #: Prefill tokens ahead of this request's first token at dispatch, its own included.
    work_tokens: float
    dispatched_s: float
    #: The TTFT the ledger predicted at dispatch (seconds).
    predicted_ttft_s: float = 0.0
    #: The prompt's tokens: with the share of it the engine reports cached, the tokens it
    #: really computed (0: unknown).
    prompt_tokens: float = 0.0
    first_token_s: float | None = None
    #: Time to first token, observed; the calibration sample waits for the engine's usage.
    ttft_s: float | None = None
    #: KV tokens the request takes there while it runs beyond the prefix it shares (its
    #: prompt less ``shared_tokens``, plus the replica's mean output)...
    kv_tokens: float = 0.0
    #: ...and the prefix it matched, which requests with the same ``shared_key`` running
    #: there at once hold once (ten questions on one image pin one image, not ten).
    shared_key: Hashable = None
    shared_tokens: float = 0.0
    #: Requests in the replica's batch when the first token came (for the step fit).
    batch_at_first: int = 0
    released: bool = False
    #: The prompt's chain of link hashes (see Ledger.pinned_links).
    hashes: Sequence[int] = ()


class Replica:
    """One deployment's ledger and fits."""

    __slots__ = ("capacity_tokens", "configured_capacity", "decoding", "engine_capacity",
                 "error_s", "mean_output", "mean_uncached", "prefill", "queued",
                 "scale_samples", "step", "token_scale", "waiting")

    def __init__(self, settings: PrefixRoutingSettings, configured_capacity: int | None
                 ) -> None:
        step_s = settings.decode_step_ms_prior / 1000.0
        self.prefill = LineFit(slope=1.0 / settings.prefill_tokens_per_s_prior,
                               intercept=0.0, span=settings.prefill_chunk_tokens)
        self.step = LineFit(slope=_PER_SEQUENCE_SHARE * step_s, intercept=step_s,
                            span=_BATCH_SPAN)
        self.queued = 0.0  # prefill tokens dispatched, first token not back
        self.waiting = 0  # requests in that state
        self.decoding = 0  # first token back, not released
        self.mean_uncached = 0.0
        self.mean_output = 0.0
        #: Mean absolute error of this replica's TTFT predictions; a decode step until measured.
        self.error_s = step_s
        self.configured_capacity = configured_capacity
        #: Its KV size in the engine's tokens (configured, or read from the engine)...
        self.engine_capacity = math.inf if configured_capacity is None else configured_capacity
        #: ...the engine's tokens per token of the gateway's estimate (from the prompt sizes
        #: the engine reports: an image's estimate is another model's count, a text's is
        #: characters / 4)...
        self.token_scale = 1.0
        self.scale_samples = 0
        #: ...and in the estimate's tokens, the unit of everything the ledger counts.
        self.capacity_tokens = self.engine_capacity

    def rescale(self) -> None:
        self.capacity_tokens = self.engine_capacity / self.token_scale

    @property
    def batch(self) -> int:
        """Requests this gateway has running or queued there."""
        return self.waiting + self.decoding
