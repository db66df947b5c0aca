"""What the TTFT scorer knows of each replica, kept up to date by the attempts it follows.

Per replica: the prefill tokens dispatched there whose first token has not come back, the
requests decoding there, two learned lines (TTFT against prefill tokens ahead, decode step
against the batch) and the KV it was sent within the eviction horizon. Every event (dispatch,
first token, release) updates the replica's two decision constants, so a decision reads each
candidate as ``base + rate x uncached tokens`` (:mod:`kvgate.routing.ttft_scorer`).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.routing import floats
from kvgate.routing.footprint import PlacedTokens
from kvgate.routing.placed_shm import SharedPlacements
from kvgate.routing.ttft_replica import Replica, Ticket

#: Weight of a new request in a replica's means (uncached tokens, output tokens).
_MEAN_ALPHA = 0.1
#: Weight of the decode slowdown a request brings the batch it joins, against TTFT seconds.
#: Chosen of 1, 0.5, 0.25 and 0 on the sweep's seed 0 (24 cells), seed 3's trace cells and
#: real vLLM (CPU) runs: at 1, replicas with longer batches were avoided so hard that cached
#: prefixes were left for cold prefills elsewhere (trace: 130 of 1,024 requests spilled, p95
#: 1.26x the first scorer's); at 0.25 (best in the simulator) precise mode piled text onto
#: the faster of two real replicas sharing 2 cores (88% of requests, hit rate 0.46 against
#: 0.81) in 2 of 3 runs; at 0, requests piled onto few replicas in the simulator too.
_DECODE_EXTERNALITY = 0.5
#: The engine's tokens per estimated token, at most (and at least its inverse).
_MAX_SCALE = 100.0


class Ledger:
    """Every replica of one model, in the strategy's deployment order."""

    def __init__(self, deployments: Sequence[Deployment], settings: PrefixRoutingSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 shared_placements: SharedPlacements | None = None) -> None:
        """``shared_placements``: the placed-KV counts shared with the other workers."""
        self.deployments = list(deployments)
        #: Each deployment's stats object (read for the engine's own queue at every event).
        self._stats = [d.stats for d in self.deployments]
        self.replicas = [Replica(settings, d.settings.kv_capacity_tokens)
                         for d in self.deployments]
        self.placed = PlacedTokens(len(self.deployments), settings.ttl_s, shared_placements)
        #: Per replica, tokens its engine computed twice within the horizon while it held
        #: what it was sent (requests racing a prefix's first prefill): they turn its KV
        #: over (residency) but are no working set (see ``released``). This worker's own.
        self.recomputed = PlacedTokens(len(self.deployments), settings.ttl_s)
        self._clock = clock
        self._chunk = float(settings.prefill_chunk_tokens)
        self._horizon_s = settings.ttl_s
        self._started_s = clock()
        #: Per replica: how long a block nobody reuses stays in its KV, from how fast new
        #: tokens enter it (``inf`` while what it was sent within the horizon fits); and the
        #: replicas where that is shorter than the horizon. Read at each refresh.
        self.residency_s = [math.inf] * len(self.deployments)
        self.turning_over: list[int] = []
        #: Per replica: cost = base + rate x uncached tokens; ``ttft_base`` leaves out what a
        #: request costs others (the decode slowdown it brings), for the explanation.
        #: NOTE: ``base``, ``rate`` and ``room`` are arrays of doubles: a decision's passes
        #: over every candidate read them in place (kvgate.routing.floats).
        self.base = floats.zeros(len(self.deployments))
        self.ttft_base = [0.0] * len(self.deployments)
        self.rate = floats.zeros(len(self.deployments))
        #: Replicas with prefill queued (waiting > 0).
        self.busy_replicas = 0
        #: Per replica, KV tokens its running and waiting requests take (``Ticket.kv_tokens``),
        #: and its KV size less those and a mean answer: the uncached prompt tokens that fit
        #: (``inf`` while its size is unknown).
        self.resident = [0.0] * len(self.deployments)
        #: Per replica: shared key -> requests in flight there sharing it (see Ticket).
        self._sharing: list[dict[Hashable, int]] = [{} for _ in self.deployments]
        #: Per replica: the requests in flight there, by id (see pinned_links).
        self._in_flight: list[dict[int, Ticket]] = [{} for _ in self.deployments]
        self.room = array("d", [r.capacity_tokens for r in self.replicas])
        for position in range(len(self.deployments)):
            self.update(position)

    def update(self, position: int) -> None:
        """Recompute the replica's decision constants after a change."""
        replica = self.replicas[position]
        others = self._others_tokens(position)
        batch = replica.waiting + replica.decoding  # (Replica.batch, without the call)
        step = replica.step
        step_s = step.predict(batch + 1)
        prefill = replica.prefill
        rate = prefill.slope + step_s / self._chunk
        self.rate[position] = rate
        ttft_base = prefill.intercept + step_s + rate * (replica.queued + others)
        self.ttft_base[position] = ttft_base
        # NOTE: joining the batch slows every step of the requests already in it, for as
        # many steps as this request decodes: their time counts against the replica too, or
        # every request would follow its prefix onto one replica until its steps crawl. At
        # a weight (_DECODE_EXTERNALITY): it is decode time, not time to a first token.
        self.base[position] = (ttft_base + _DECODE_EXTERNALITY * step.slope * batch
                               * replica.mean_output)

    def _others_tokens(self, position: int) -> float:
        """Prefill the engine is waiting on that this gateway did not send (other gateways'
        requests), at the replica's mean uncached tokens per request."""
        replica = self.replicas[position]
        waiting = self._stats[position].engine_waiting
        return max(0.0, waiting - replica.waiting) * replica.mean_uncached

    def refresh(self, now_s: float) -> None:
        """Engine figures (KV size) for every replica, the fits' fading with time, their
        shared prior, and each replica's residency (call after ``placed.expire``)."""
        self._refresh_residency(now_s)
        self._share_priors()
        for position, (replica, deployment) in enumerate(
                zip(self.replicas, self.deployments, strict=True)):
            replica.prefill.relax(now_s)
            replica.step.relax(now_s)
            if replica.configured_capacity is None:
                scraped = deployment.stats.engine_kv_capacity_tokens
                replica.engine_capacity = scraped if scraped > 0 else math.inf
                replica.rescale()
            self._update_room(position)  # from the size just read
            self.update(position)

    def _share_priors(self) -> None:
        """Each replica's prior becomes what the model's replicas measured (a weighted mean
        of their fits), the configured prior until one has been measured.

        NOTE: replicas of one model usually run on the same hardware. With the configured
        prior alone, a replica nobody had sent work to yet looked as slow as that prior
        (10k tokens/s, 25 ms steps) beside replicas measured at 30k and 7 ms, so cold
        prompts never went there and it never got measured: two of four replicas served
        nothing in a simulated trace at 30% load."""
        for attribute in ("prefill", "step"):
            fits = [getattr(replica, attribute) for replica in self.replicas]
            weight = sum(fit.measured_weight for fit in fits)
            if weight <= 0.0:
                continue
            slope = sum(fit.slope * fit.measured_weight for fit in fits) / weight
            intercept = sum(fit.intercept * fit.measured_weight for fit in fits) / weight
            for fit in fits:
                fit.set_prior(slope=slope, intercept=intercept)

    def _refresh_residency(self, now_s: float) -> None:
        # NOTE: vLLM evicts the least recently used free blocks: a block last used t seconds
        # ago is gone once more than the KV's size in new tokens came in since, i.e. after
        # capacity / inflow seconds, the inflow being the tokens placed there per second.
        placed = self.placed.totals()
        self.recomputed.expire(now_s)
        recomputed = self.recomputed.totals()
        window_s = max(1.0, min(self._horizon_s, now_s - self._started_s))
        turning = []
        for position, replica in enumerate(self.replicas):
            resident = min(self.resident[position], replica.capacity_tokens)
            free = replica.capacity_tokens - resident
            # The free part turns over with the inflow that competes for it: what was
            # placed or computed again, less what sits pinned by the requests running now.
            churn = placed[position] + recomputed[position] - resident
            if churn > free:
                self.residency_s[position] = window_s * free / churn
                turning.append(position)
            else:
                self.residency_s[position] = math.inf
        self.turning_over = turning

    # -- events -----------------------------------------------------------------------------

    def dispatched(self, position: int, uncached_tokens: float, *, prompt_tokens: float = 0.0,
                   shared_key: Hashable = None, shared_tokens: float = 0.0,
                   hashes: Sequence[int] = (), now_s: float | None = None) -> Ticket:
        """``prompt_tokens``: the prompt's size (0: unknown; no KV is counted for it);
        ``shared_key``, ``shared_tokens``: the prefix it matched there and an identity for it
        (see :class:`Ticket`). ``now_s``: when it happened, if not now (write-behind)."""
        if now_s is None:
            now_s = self._clock()
        replica = self.replicas[position]
        others = self._others_tokens(position)
        ticket = Ticket(position, uncached_tokens, replica.queued + others + uncached_tokens,
                        now_s, self.ttft_base[position] + self.rate[position] * uncached_tokens,
                        prompt_tokens)
        if prompt_tokens > 0:
            resident = self.resident
            if shared_key is not None and shared_tokens > 0:
                ticket.shared_key, ticket.shared_tokens = shared_key, shared_tokens
                sharing = self._sharing[position]
                held = sharing.get(shared_key, 0)
                if not held:
                    resident[position] += shared_tokens
                sharing[shared_key] = held + 1
            ticket.kv_tokens = prompt_tokens - ticket.shared_tokens + replica.mean_output
            resident[position] += ticket.kv_tokens
            self._update_room(position)
        ticket.hashes = hashes
        self._in_flight[position][id(ticket)] = ticket
        replica.queued += uncached_tokens
        replica.waiting += 1
        if replica.waiting == 1:
            self.busy_replicas += 1
        replica.mean_uncached += _MEAN_ALPHA * (uncached_tokens - replica.mean_uncached)
        self.placed.add_dispatched(position, uncached_tokens, now_s)
        self.update(position)
        return ticket

    def first_token(self, ticket: Ticket, now_s: float | None = None) -> None:
        """The ticket's first token arrived (a stream): its prefill is done, and its time is a
        calibration sample. ``now_s``: when it arrived, if not now."""
        if ticket.released or ticket.first_token_s is not None:
            return
        if now_s is None:
            now_s = self._clock()
        ticket.first_token_s = now_s
        replica = self.replicas[ticket.position]
        self._leave_queue(replica, ticket)
        replica.decoding += 1
        ticket.batch_at_first = replica.batch
        ticket.ttft_s = now_s - ticket.dispatched_s
        replica.error_s += _MEAN_ALPHA * (abs(ticket.ttft_s - ticket.predicted_ttft_s)
                                          - replica.error_s)
        self.update(ticket.position)

    def released(self, ticket: Ticket, output_tokens: int,
                 usage: EngineUsage | None = None, now_s: float | None = None) -> None:
        """The attempt ended (answered, failed or abandoned) after ``output_tokens``;
        ``usage``: the prompt's tokens and cached tokens as its engine reported them;
        ``now_s``: when it ended, if not now."""
        if ticket.released:
            return
        ticket.released = True
        self._in_flight[ticket.position].pop(id(ticket), None)
        if now_s is None:
            now_s = self._clock()
        replica = self.replicas[ticket.position]
        # NOTE: the TTFT sample is of the tokens the engine really computed: where the index
        # said "held" but the engine had evicted, the sample is a full prefill, and taking it
        # as the predicted few tokens taught the fit a replica seconds slower than it is.
        missed = 0.0
        if usage is not None and ticket.prompt_tokens > 0:
            sample = min(_MAX_SCALE, max(1.0 / _MAX_SCALE,
                                         usage.prompt_tokens / ticket.prompt_tokens))
            # NOTE: the mean of the samples so far until there are 1 / alpha of them: the
            # starting 1.0 is no measurement, and a vision encoder other than the estimate's
            # (576 tokens where 3,699 were estimated) sized the KV 6x wrong for the dozens
            # of requests an average from 1.0 takes, just when cold prefixes are placed.
            replica.scale_samples += 1
            replica.token_scale += (max(_MEAN_ALPHA, 1.0 / replica.scale_samples)
                                    * (sample - replica.token_scale))
            replica.rescale()
            missed = (1.0 - usage.cached_share) * ticket.prompt_tokens - ticket.uncached_tokens
            if missed > 0:
                # What it computed beyond the estimate entered its KV too and turns it over
                # (the eviction clock of _refresh_residency). Where its KV turns over within
                # the horizon it was evicted: it counts as placed, the footprint of a replica
                # that thrashes (without it, a simulated images run sent lost images back to
                # the replica recomputing them: hit rate .955 -> .912). NOTE: where the KV
                # holds what it was sent, the engine computed a prefix twice (requests racing
                # its first prefill): counted as placed, with two workers the replica looked
                # one image fuller than it was and took the 7th of 12 images that fit 6.
                if math.isinf(self.residency_s[ticket.position]):
                    self.recomputed.add(ticket.position, missed, now_s)
                else:
                    self.placed.add(ticket.position, missed, now_s)
        # (room is brought up to date once, below)
        position = ticket.position
        resident = self.resident
        resident[position] -= ticket.kv_tokens
        if ticket.shared_key is not None:
            sharing = self._sharing[position]
            held = sharing[ticket.shared_key] - 1
            if held:
                sharing[ticket.shared_key] = held
            else:
                del sharing[ticket.shared_key]
                resident[position] -= ticket.shared_tokens
        if ticket.first_token_s is None:
            self._leave_queue(replica, ticket)
            if output_tokens > 0:
                # A blocking answer: its TTFT is the whole time less the decode steps after
                # the first token, at the replica's current step time.
                steps_s = (output_tokens - 1) * replica.step.predict(
                    replica.waiting + replica.decoding + 1)
                self._observe_ttft(replica, ticket, now_s - ticket.dispatched_s - steps_s,
                                   now_s, missed)
        else:
            replica.decoding -= 1
            if ticket.ttft_s is not None:
                self._observe_ttft(replica, ticket, ticket.ttft_s, now_s, missed)
            if output_tokens >= 2:
                batch = (ticket.batch_at_first + replica.batch + 1) / 2
                replica.step.observe(batch, (now_s - ticket.first_token_s)
                                     / (output_tokens - 1), now_s)
        if output_tokens > 0:
            replica.mean_output += _MEAN_ALPHA * (output_tokens - replica.mean_output)
        if replica.waiting + replica.decoding == 0:
            resident[position] = 0.0  # no float drift on an idle replica
        self._update_room(position)  # with the new mean answer
        self.update(position)

    def _update_room(self, position: int) -> None:
        replica = self.replicas[position]
        self.room[position] = (replica.capacity_tokens - self.resident[position]
                               - replica.mean_output)

    def pinned_links(self, position: int, hashes: Sequence[int]) -> int:
        """The leading links of ``hashes`` that a request in flight there shares (its blocks
        are in use, so the engine cannot have evicted them)."""
        most = 0
        for ticket in self._in_flight[position].values():
            other = ticket.hashes
            high = min(len(other), len(hashes))
            if high <= most or other[most] != hashes[most]:
                continue  # shares no more than ``most`` links
            low = most + 1
            while low < high:  # the links agree up to some point, then never again
                middle = (low + high + 1) // 2
                if other[middle - 1] == hashes[middle - 1]:
                    low = middle
                else:
                    high = middle - 1
            most = low
        return most

    def admission_wait_s(self, position: int, new_tokens: float) -> float:
        """Time a request that brings ``new_tokens`` of KV (its uncached prompt tokens)
        waits there for KV space, not for compute: when what runs there and those exceed the
        replica's KV, the engine admits it only as running requests finish (or preempts one,
        which costs as much), a share of their remaining decode."""
        resident = self.resident[position]
        replica = self.replicas[position]
        over = resident + new_tokens + replica.mean_output - replica.capacity_tokens
        if over <= 0 or resident <= 0:
            return 0.0
        drain_s = replica.mean_output * replica.step.predict(replica.batch)
        return drain_s * min(1.0, over / resident)

    def _leave_queue(self, replica: Replica, ticket: Ticket) -> None:
        replica.waiting -= 1
        replica.queued -= ticket.uncached_tokens
        if replica.waiting == 0:
            replica.queued = 0.0  # no float drift on an idle replica
            self.busy_replicas -= 1

    def _observe_ttft(self, replica: Replica, ticket: Ticket, ttft_s: float, now_s: float,
                      missed_tokens: float = 0.0) -> None:
        """``missed_tokens``: computed beyond the ticket's uncached estimate (negative: the
        engine held more than estimated)."""
        work = max(0.0, ticket.work_tokens + missed_tokens)
        steps_s = replica.step.predict(ticket.batch_at_first) * (1.0 + work / self._chunk)
        replica.prefill.observe(work, max(0.0, ttft_s - steps_s), now_s)

    # -- observability ----------------------------------------------------------------------

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per deployment id: the learned figures and the ledger, for ``/admin/stats``."""
        placed, recomputed = self.placed.totals(), self.recomputed.totals()
        out: dict[str, dict[str, Any]] = {}
        for position, (replica, deployment) in enumerate(
                zip(self.replicas, self.deployments, strict=True)):
            prefill, step = replica.prefill, replica.step
            out[deployment.id] = {
                "prefill_tokens_per_s": round(1.0 / prefill.slope, 1),
                "ttft_fixed_ms": round(prefill.intercept * 1e3, 3),
                "decode_step_ms": round(step.intercept * 1e3, 3),
                "decode_step_ms_per_sequence": round(step.slope * 1e3, 4),
                "ttft_error_ms": round(replica.error_s * 1e3, 3),
                "ttft_samples": prefill.samples,
                "step_samples": step.samples,
                "queued_prefill_tokens": round(replica.queued, 1),
                "waiting_requests": replica.waiting,
                "decoding_requests": replica.decoding,
                "mean_output_tokens": round(replica.mean_output, 1),
                "placed_tokens": round(placed[position], 1),
                "recomputed_tokens": round(recomputed[position], 1),
                "kv_residency_s": (None if math.isinf(self.residency_s[position])
                                   else round(self.residency_s[position], 1)),
                "resident_tokens": round(self.resident[position], 1),
                "kv_capacity_tokens": (None if math.isinf(replica.engine_capacity)
                                       else int(replica.engine_capacity)),
                "engine_tokens_per_estimated_token": round(replica.token_scale, 3),
            }
        return out
