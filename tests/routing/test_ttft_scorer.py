"""The predicted-TTFT scorer: cached prefix against queue (both ways), footprint placement of
equal and unequal prefixes, per-replica calibration, and a ledger that returns to zero."""

from __future__ import annotations

import math
import random

import pytest

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from tests.routing.factories import deployment
from tests.support.clock import FakeClock

#: The prior: 10k tokens/s prefill, 25 ms decode steps, 2,048-token prefill chunks.
SETTINGS = PrefixRoutingSettings()


def scorer(fleet: list[Deployment], clock: FakeClock | None = None) -> TTFTScorer:
    return TTFTScorer("t", fleet, SETTINGS, block_tokens=16, clock=clock or FakeClock(0.0))


def pick(s: TTFTScorer, fleet: list[Deployment], prompt: float,
         matched: list[float]) -> tuple[Deployment, dict[str, object]]:
    decision, _ = s.choose(fleet, prompt, matched, max(matched))
    return decision.deployment, decision.explanation


def queue(s: TTFTScorer, position: int, tokens: float) -> Ticket:
    """A request of ``tokens`` uncached tokens dispatched to ``position``, still prefilling."""
    return s.ledger.dispatched(position, tokens)


def serve(s: TTFTScorer, clock: FakeClock, position: int, tokens: float) -> None:
    """A request of ``tokens`` uncached tokens served alone at ``position`` exactly as fast
    as the prior says (10k tokens/s; a step of 25 ms + 2% per sequence, one per 2,048
    tokens), so every replica's fits stay the prior; answered before the next arrives."""
    step_s = 0.025 * 1.02  # a batch of one
    ticket = s.ledger.dispatched(position, tokens)
    clock.now_s += tokens / 10_000 + step_s * (1 + tokens / 2048)
    s.ledger.first_token(ticket)
    clock.now_s += 19 * step_s
    s.ledger.released(ticket, 20)


@pytest.mark.parametrize(("queued_tokens", "winner"), [(2_000, 0), (20_000, 1)])
def test_a_long_cached_prefix_on_a_busy_replica_against_a_cold_idle_one(
        queued_tokens: int, winner: int) -> None:
    # 8k-token prompt, 7k of it cached on r0. With 2k tokens queued there, waiting beats
    # computing 8k on idle r1; with 20k queued, the cold prefill on r1 is sooner. The figures
    # are HOW_ROUTING_WORKS.md's worked example.
    fleet = [deployment("r0", kv_capacity_tokens=100_000),
             deployment("r1", kv_capacity_tokens=100_000)]
    s = scorer(fleet)
    queue(s, 0, queued_tokens)
    chosen, explanation = pick(s, fleet, 8_000, [7_000, 0])
    assert chosen is fleet[winner]
    assert explanation["outcome"] == ("hit" if winner == 0 else "spill")
    candidates = explanation["candidates"]
    assert isinstance(candidates, dict)
    costs = {rid: c["predicted_cost_ms"] for rid, c in candidates.items()}
    assert costs[fleet[winner].id] == min(costs.values())
    assert costs["r0"] == pytest.approx(420 if winner == 0 else 2449, abs=1)
    assert costs["r1"] == pytest.approx(1375, abs=1)
    assert explanation["runner_up_margin_ms"] == pytest.approx(
        abs(costs["r0"] - costs["r1"]), abs=0.01)


def test_equal_prefixes_arriving_one_by_one_are_placed_six_and_six() -> None:
    # 12 images of 4,725 tokens on 2 replicas each holding 7, nothing queued anywhere: every
    # placement is a tie on predicted time, broken by the emptier KV.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=7 * 4_725) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    placed = [0, 0]
    for _ in range(12):
        chosen, explanation = pick(s, fleet, 4_725, [0, 0])
        assert explanation["outcome"] == "cold"
        serve(s, clock, fleet.index(chosen), 4_725)
        placed[fleet.index(chosen)] += 1
    assert placed == [6, 6]


def test_a_cold_prefix_goes_where_it_fits_not_where_it_would_evict() -> None:
    # r0 already holds 7 images (its whole KV), r1 holds 5 and is busy with a short prefill:
    # r0 would answer a little sooner but only by evicting an image someone is reusing.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=7 * 4_725) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for position, images in ((0, 7), (1, 5)):
        for _ in range(images):
            serve(s, clock, position, 4_725)
    queue(s, 1, 1_000)
    chosen, explanation = pick(s, fleet, 4_725, [0, 0])
    assert chosen is fleet[1]
    candidates = explanation["candidates"]
    assert isinstance(candidates, dict)
    assert candidates["r0"]["eviction_ms"] > 0 and "eviction_ms" not in candidates["r1"]


@pytest.mark.parametrize("lost_at_home", [True, False])
def test_a_prefix_its_replica_lost_goes_back_there_not_onto_a_full_one(
        lost_at_home: bool) -> None:
    # Both replicas were sent 7 images, their whole KV; r0 has lost one of its own (the
    # index lists it there, the KV no longer holds it) and is busy with a short prefill
    # (1,000 tokens more than it holds). Taking the image back restores r0's working set,
    # evicting only that overflow; on r1 it would push out an image someone is reusing.
    # Unknown to the scorer (known=None), both would evict a whole image, and r1 is sooner.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=7 * 4_725) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for position in (0, 1):
        for _ in range(7):
            serve(s, clock, position, 4_725)
    queue(s, 0, 1_000)
    decision, _ = s.choose(fleet, 4_725, [0, 0], 0,
                           known=[4_725, 0] if lost_at_home else None)
    assert decision.deployment is fleet[0 if lost_at_home else 1]
    candidates = decision.explanation["candidates"]
    assert isinstance(candidates, dict)
    evictions = {rid: c["eviction_ms"] for rid, c in candidates.items()}
    if lost_at_home:
        assert evictions["r0"] < evictions["r1"] / 4
    else:
        assert evictions["r0"] > evictions["r1"] * 0.9


def test_unequal_prefixes_fill_by_tokens_not_by_count() -> None:
    fleet = [deployment(f"r{i}", kv_capacity_tokens=10_000) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    homes = []
    for size in (9_000, 3_000, 3_000, 3_000):
        chosen, _ = pick(s, fleet, size, [0, 0])
        serve(s, clock, fleet.index(chosen), size)
        homes.append(fleet.index(chosen))
    # The big prefix alone on one replica, the three small ones together on the other.
    assert homes.count(homes[0]) == 1 and len(set(homes[1:])) == 1


def test_a_replica_learned_slower_gets_the_cold_prompt_less_often() -> None:
    fleet = [deployment("fast"), deployment("slow")]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for size in (100.0, 1_000.0, 4_000.0) * 20:
        for position, s_per_token in ((0, 1e-4), (1, 4e-4)):
            ticket = s.ledger.dispatched(position, size)
            clock.now_s += 0.05 + s_per_token * size
            s.ledger.first_token(ticket)
            s.ledger.released(ticket, 1)
    learned = s.ledger.describe()
    assert learned["fast"]["prefill_tokens_per_s"] > 2.5 * learned["slow"]["prefill_tokens_per_s"]
    assert learned["slow"]["ttft_samples"] == 60
    chosen, _ = pick(s, fleet, 3_000, [0, 0])
    assert chosen is fleet[0]
    # ...unless the fast one has a queue longer than the difference.
    queue(s, 0, 20_000)
    chosen, _ = pick(s, fleet, 3_000, [0, 0])
    assert chosen is fleet[1]


def test_the_ledger_returns_to_zero_whatever_the_endings() -> None:
    fleet = [deployment("r0"), deployment("r1")]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    tickets = [s.ledger.dispatched(i % 2, 100.0 + i) for i in range(10)]
    assert s.ledger.describe()["r0"]["waiting_requests"] == 5
    for i, ticket in enumerate(tickets):
        clock.now_s += 0.1
        if i % 3 == 0:  # a stream: first token, then the end
            s.ledger.first_token(ticket)
            s.ledger.first_token(ticket)  # a second first token changes nothing
            s.ledger.released(ticket, 20)
        elif i % 3 == 1:  # a blocking answer
            s.ledger.released(ticket, 20)
        else:  # abandoned before any token
            s.ledger.released(ticket, 0)
        s.ledger.released(ticket, 5)  # released twice: once only
        s.ledger.first_token(ticket)  # a token after release: ignored
    for figures in s.ledger.describe().values():
        assert figures["waiting_requests"] == 0 and figures["queued_prefill_tokens"] == 0


def _learn_on_misses(report_cached: bool) -> dict[str, object]:
    """r0 serves 8k-token prompts the index says it holds 7k of, but its engine had evicted
    them: it computes all 8k, at the prior's speed."""
    fleet = [deployment("r0")]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for _ in range(40):
        ticket = s.ledger.dispatched(0, 1_000, prompt_tokens=8_000)
        clock.now_s += 8_000 / 10_000 + 0.025 * 1.02 * (1 + 8_000 / 2048)
        s.ledger.first_token(ticket)
        clock.now_s += 19 * 0.025
        s.ledger.released(ticket, 20, EngineUsage(8_000, 0) if report_cached else None)
    return s.ledger.describe()["r0"]


def test_the_calibration_sample_counts_the_tokens_the_engine_computed() -> None:
    # With the engine's usage, the fit sees 8k tokens computed in 0.8 s (+ steps): the prior,
    # unchanged. Without it, the same times look like 1k tokens taking 0.9 s: a replica far
    # slower than it is, which every later decision would avoid.
    measured = _learn_on_misses(report_cached=True)
    assert measured["prefill_tokens_per_s"] == pytest.approx(10_000, rel=0.1)
    assert measured["ttft_fixed_ms"] == pytest.approx(0, abs=50)
    blind = _learn_on_misses(report_cached=False)
    assert blind["ttft_fixed_ms"] > 300 or blind["prefill_tokens_per_s"] < 3_000
    # What it recomputed turned its KV over (7k per request), but it was placed there
    # already: the footprint is what was sent, the same whether the engine reports or not.
    assert measured["placed_tokens"] == blind["placed_tokens"] == 40 * 1_000
    assert measured["recomputed_tokens"] == 40 * 7_000 and blind["recomputed_tokens"] == 0


@pytest.mark.parametrize(("output_tokens", "winner"), [(20, 0), (1_000, 1)])
def test_a_prompt_waits_for_kv_space_on_a_replica_its_running_requests_fill(
        output_tokens: int, winner: int) -> None:
    # Both replicas hold 10k tokens of KV. Two 4.5k-token requests run on r0 (first tokens
    # back, decoding); a 4k prompt with 3k of it cached on r0 brings 1k new tokens and its
    # answer, which do not fit beside them, so r0 admits it only as they finish: with short
    # answers that is soon and the cached 3k win; with long ones the cold prefill on idle r1
    # is sooner.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=10_000) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for _ in range(40):  # the replicas' mean answer length: ``output_tokens``
        ticket = s.ledger.dispatched(0, 10, prompt_tokens=10)
        s.ledger.first_token(ticket)
        s.ledger.released(ticket, output_tokens)
    running = [s.ledger.dispatched(0, 4_500, prompt_tokens=4_500) for _ in range(2)]
    for ticket in running:
        s.ledger.first_token(ticket)
    chosen, explanation = pick(s, fleet, 4_000, [3_000, 0])
    assert chosen is fleet[winner]
    candidates = explanation["candidates"]
    assert isinstance(candidates, dict)
    assert candidates["r0"]["kv_wait_ms"] > 0 and "kv_wait_ms" not in candidates["r1"]
    for ticket in running:
        s.ledger.released(ticket, output_tokens)
    assert s.ledger.describe()["r0"]["resident_tokens"] == 0
    _, explanation = pick(s, fleet, 4_000, [3_000, 0])
    assert "kv_wait_ms" not in explanation["candidates"]["r0"]  # type: ignore[index]


def test_requests_sharing_a_prefix_hold_it_once_in_the_kv_they_take() -> None:
    fleet = [deployment("r0", kv_capacity_tokens=100_000)]
    s = scorer(fleet)
    image = [s.ledger.dispatched(0, 50, prompt_tokens=5_000, shared_key="image",
                                 shared_tokens=4_950) for _ in range(10)]
    other = s.ledger.dispatched(0, 3_000, prompt_tokens=3_000)
    # One image (4,950) + ten questions (50 each) + the other prompt; no answers seen yet.
    assert s.ledger.describe()["r0"]["resident_tokens"] == 4_950 + 10 * 50 + 3_000
    for ticket in image[:9]:
        s.ledger.released(ticket, 0)
    assert s.ledger.describe()["r0"]["resident_tokens"] == 4_950 + 50 + 3_000
    s.ledger.released(image[9], 0)
    s.ledger.released(other, 0)
    assert s.ledger.describe()["r0"]["resident_tokens"] == 0


def test_kv_sizes_are_compared_in_the_estimates_tokens() -> None:
    # The engine's prompts are 4x the gateway's estimate (say images of a model with more
    # vision tokens): its 40k-token KV holds 10k estimated tokens, and what the ledger counts
    # is compared with that.
    fleet = [deployment("r0", kv_capacity_tokens=40_000)]
    s = scorer(fleet)
    for _ in range(60):
        ticket = s.ledger.dispatched(0, 1_000, prompt_tokens=1_000)
        s.ledger.released(ticket, 1, EngineUsage(4_000, 0))
    described = s.ledger.describe()["r0"]
    assert described["engine_tokens_per_estimated_token"] == pytest.approx(4.0, rel=0.01)
    assert described["kv_capacity_tokens"] == 40_000  # as the engine counts it
    assert s.ledger.replicas[0].capacity_tokens == pytest.approx(10_000, rel=0.01)


def test_the_first_engine_counts_size_the_kv_at_once() -> None:
    # A vision encoder with 6x fewer tokens per image than the estimate: the first answer's
    # usage sets the scale (an average from the starting 1.0 took dozens of requests, while
    # cold images were being placed on a KV sized 6x too small).
    fleet = [deployment("r0", kv_capacity_tokens=5_120)]
    s = scorer(fleet)
    ticket = s.ledger.dispatched(0, 3_700, prompt_tokens=3_700)
    s.ledger.released(ticket, 1, EngineUsage(600, 0))
    assert s.ledger.replicas[0].capacity_tokens == pytest.approx(5_120 * 3_700 / 600)
    # Then the mean of the samples, until there are enough for the moving average.
    ticket = s.ledger.dispatched(0, 3_700, prompt_tokens=3_700)
    s.ledger.released(ticket, 1, EngineUsage(1_000, 0))
    assert s.ledger.replicas[0].token_scale == pytest.approx(800 / 3_700)


def test_a_replica_nobody_has_measured_yet_is_taken_to_be_like_the_others() -> None:
    # r0 and r1 were measured 3x faster than the configured prior; r2 has served nothing.
    # With the prior alone r2 looks 3x slower than it is and a cold prompt never goes
    # there, so it is never measured; with the fleet's figures as its prior it gets the
    # prompt when the others are busy.
    fleet = [deployment(f"r{i}") for i in range(3)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for size in (500.0, 2_000.0, 4_000.0) * 10:
        for position in (0, 1):
            ticket = s.ledger.dispatched(position, size)
            clock.now_s += 0.01 + size / 30_000
            s.ledger.first_token(ticket)
            s.ledger.released(ticket, 1)
    s.ledger.refresh(clock.now_s)
    learned = s.ledger.describe()
    assert learned["r2"]["ttft_samples"] == 0
    # The prior is the measured replicas' fits (which the prior itself pulls a little).
    assert learned["r2"]["prefill_tokens_per_s"] > 2 * SETTINGS.prefill_tokens_per_s_prior
    assert learned["r2"]["prefill_tokens_per_s"] > 0.5 * learned["r0"]["prefill_tokens_per_s"]
    queue(s, 0, 1_000)
    queue(s, 1, 1_000)
    chosen, _ = pick(s, fleet, 3_000, [0, 0, 0])
    assert chosen is fleet[2]


def test_only_the_free_part_of_a_kv_turns_over_with_what_competes_for_it() -> None:
    # Both replicas hold 10k tokens and were sent 30k within the last 10 s; requests running
    # on r0 hold about 5k of its KV, which the engine cannot evict: its least recently used
    # pool is the other ~5k, through which the ~25k placed beside them turned over.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=10_000) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    running = s.ledger.dispatched(0, 0.0, prompt_tokens=5_000)
    for position in (0, 1):
        s.ledger.placed.add(position, 30_000, 0.0)
    clock.now_s = 10.0
    s.ledger.placed.expire(clock.now_s)
    s.ledger.refresh(clock.now_s)
    resident = s.ledger.describe()["r0"]["resident_tokens"]
    assert resident >= 5_000
    assert s.ledger.residency_s[1] == pytest.approx(10.0 * 10_000 / 30_000)
    assert s.ledger.residency_s[0] == pytest.approx(
        10.0 * (10_000 - resident) / (30_000 - resident))
    assert s.ledger.residency_s[0] < s.ledger.residency_s[1]
    s.ledger.released(running, 0)
    s.ledger.refresh(clock.now_s)
    assert s.ledger.residency_s[0] == pytest.approx(s.ledger.residency_s[1])


def test_a_prefix_computed_again_turns_the_kv_over_but_is_no_new_working_set() -> None:
    # Both replicas hold 10k tokens and were sent 8k of prefixes. Then ten requests on r0,
    # which the index said hit its 4k prefix, were computed in full by the engine: r0 holds
    # what it was sent, so not evicted but computed twice (requests racing the prefix's
    # first prefill): 40k tokens through r0's KV.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=10_000) for i in range(2)]
    clock = FakeClock(0.0)
    s = scorer(fleet, clock)
    for position in (0, 1):
        s.ledger.released(s.ledger.dispatched(position, 8_000, prompt_tokens=8_000), 1)
    for _ in range(10):
        s.ledger.released(s.ledger.dispatched(0, 0.0, prompt_tokens=4_000), 1,
                          EngineUsage(4_000, 0))
    clock.now_s = 10.0
    s.ledger.placed.expire(clock.now_s)
    s.ledger.refresh(clock.now_s)
    stats = s.ledger.describe()
    # The footprint: what each was sent, alike; a cold 4k prefix evicts nothing on either,
    # and the tie goes by the fill, equal: no replica looks 40k fuller than the other.
    assert stats["r0"]["placed_tokens"] == stats["r1"]["placed_tokens"] == 8_000
    assert stats["r0"]["recomputed_tokens"] == 40_000
    _, explanation = pick(s, fleet, 2_000, [0, 0])
    candidates = explanation["candidates"]
    assert isinstance(candidates, dict)
    assert not any("eviction_ms" in c for c in candidates.values())
    # The turnover: r0's blocks last (10k / 48k) of the 10 s, r1's the whole horizon.
    assert s.ledger.residency_s[0] == pytest.approx(10.0 * 10_000 / 48_000, rel=0.05)
    assert math.isinf(s.ledger.residency_s[1])


def test_links_a_request_in_flight_shares_are_pinned_until_it_ends() -> None:
    s = scorer([deployment("r0"), deployment("r1")])
    first = s.ledger.dispatched(0, 100, prompt_tokens=100, hashes=[1, 2, 3, 4, 5])
    second = s.ledger.dispatched(0, 100, prompt_tokens=100, hashes=[1, 2, 7])
    assert s.ledger.pinned_links(0, [1, 2, 3, 9]) == 3
    assert s.ledger.pinned_links(0, [1, 2, 7, 8]) == 3
    assert s.ledger.pinned_links(0, [6]) == 0
    assert s.ledger.pinned_links(1, [1, 2, 3]) == 0  # in flight elsewhere
    s.ledger.released(first, 1)
    assert s.ledger.pinned_links(0, [1, 2, 3, 9]) == 2
    s.ledger.released(second, 1)
    assert s.ledger.pinned_links(0, [1, 2, 3, 9]) == 0


def _shared_run(a: list[int], b: list[int]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[count] == b[count]:
        count += 1
    return count


@pytest.mark.parametrize("seed", range(3))
def test_pinned_links_are_the_longest_shared_run_by_hand(seed: int) -> None:
    rng = random.Random(seed)
    s = scorer([deployment("r0")])
    trunk = [rng.getrandbits(64) for _ in range(40)]
    chains = [trunk[:rng.randrange(41)] + [rng.getrandbits(64) for _ in range(rng.randrange(5))]
              for _ in range(8)]
    for chain in chains:  # the tickets dropped here: the ledger must keep them apart itself
        s.ledger.dispatched(0, 10, prompt_tokens=10, hashes=chain)
    for _ in range(20):
        query = [*trunk[:rng.randrange(41)], rng.getrandbits(64)]
        assert s.ledger.pinned_links(0, query) == max(_shared_run(c, query) for c in chains)


def test_a_prefix_computed_again_where_more_was_sent_than_fits_counts_as_placed() -> None:
    # r0 holds 10k tokens and was sent 12k, so its KV turns over: what its engine computes
    # again was evicted, and counts in its footprint (a replica that thrashes looks as full
    # as it is), not only in its turnover.
    fleet = [deployment(f"r{i}", kv_capacity_tokens=10_000) for i in range(2)]
    s = scorer(fleet, FakeClock(0.0))
    s.ledger.released(s.ledger.dispatched(0, 12_000, prompt_tokens=12_000), 1)
    s.ledger.refresh(0.0)
    assert s.ledger.residency_s[0] < SETTINGS.ttl_s  # it turns over
    for _ in range(10):
        s.ledger.released(s.ledger.dispatched(0, 0.0, prompt_tokens=4_000), 1,
                          EngineUsage(4_000, 0))
    stats = s.ledger.describe()["r0"]
    assert stats["placed_tokens"] == 12_000 + 40_000
    assert stats["recomputed_tokens"] == 0
