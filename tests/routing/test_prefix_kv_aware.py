"""prefix_kv_aware: affinity for shared prefixes and images, balanced by predicted TTFT (and the
v1 comparison arm's load guard)."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter

import httpx
import orjson

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment
from kvgate.request.parse import parse_call
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.load import InFlightLoad
from kvgate.routing.prefix_kv_aware import PrefixKVAware, _links_served_since
from kvgate.routing.prefix_kv_aware_v1 import PrefixKVAwareV1
from tests.routing.factories import deployment
from tests.support.clock import FakeClock
from tests.support.images import png
from tests.support.processes import run_gateway

DOCS = [f"Document {i}: " + ("lorem ipsum dolor sit amet " * 60) + f" end of document {i}."
        for i in range(8)]


def chat(system: str, question: str, image: bytes | None = None) -> Call:
    content: list[dict[str, object]] = [{"type": "text", "text": question}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    body = {"model": "m", "messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": content}]}
    return parse_call(orjson.dumps(body), "chat", models={"m"}, max_image_bytes=1 << 20)


def strategy(fleet: list[Deployment], **settings: float) -> PrefixKVAware:
    return PrefixKVAware(
        fleet, PrefixRoutingSettings(block_chars=64, **settings),  # type: ignore[arg-type]
        MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300),
    )


def strategy_v1(fleet: list[Deployment], **settings: float) -> PrefixKVAwareV1:
    return PrefixKVAwareV1(
        fleet, PrefixRoutingSettings(block_chars=64, **settings),  # type: ignore[arg-type]
        MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300), InFlightLoad(),
    )


def route(s: PrefixKVAware, call: Call, fleet: list[Deployment], *,
          finish: bool = True) -> Deployment:
    """Route ``call``; with ``finish`` it is answered at once (its first token and its end
    reach the strategy), so it leaves no queue behind."""
    asyncio.run(s.prepare(call))
    decision = s.choose(call, fleet)
    s.on_dispatched(call, decision.deployment)
    call.route = decision.explanation
    if finish:
        answer(s, call, decision.deployment)
    return decision.deployment


def answer(s: PrefixKVAware, call: Call, where: Deployment) -> None:
    """The upstream answered ``call`` at ``where``: first token, then the end."""
    s.on_first_token(call, where)
    s.on_released(call, where, 1)


def route_together(s: PrefixKVAware, calls: list[Call], fleet: list[Deployment]
                   ) -> list[Deployment]:
    """Route ``calls`` as they would arrive at once (each queued when the next is routed),
    then answer them all."""
    chosen = [route(s, call, fleet, finish=False) for call in calls]
    for call, where in zip(calls, chosen, strict=True):
        answer(s, call, where)
    return chosen


def test_shared_prefixes_stick_to_the_replica_that_served_them() -> None:
    fleet = [deployment(f"r{i}") for i in range(4)]
    s = strategy(fleet)
    first = dict(zip(DOCS, route_together(s, [chat(doc, "summarise") for doc in DOCS], fleet),
                     strict=True))
    # Cold prompts arriving together spread by their queued prefill: every replica got some.
    assert set(first.values()) == set(fleet)
    rng = random.Random(3)
    for _ in range(200):
        doc = rng.choice(DOCS)
        call = chat(doc, f"question {rng.random()}")
        assert route(s, call, fleet) is first[doc]
        assert call.route["outcome"] == "hit"
        assert call.route["matched_tokens"] > 300


def test_same_image_goes_where_it_was_seen_other_image_spreads() -> None:
    fleet = [deployment(f"r{i}") for i in range(2)]
    s = strategy(fleet)
    images = [bytes([i]) * 5000 for i in range(6)]
    home = dict(enumerate(route_together(
        s, [chat("Describe.", "what is this?", img) for img in images], fleet)))
    assert set(home.values()) == set(fleet)
    for i, img in enumerate(images):
        call = chat("Describe.", f"colour {i}?", img)
        assert route(s, call, fleet) is home[i]
        # The image link carries its vision tokens in the match.
        assert call.route["matched_tokens"] >= call.image_tokens[0]


def test_v1_load_guard_spreads_one_hot_prefix() -> None:
    fleet = [deployment(f"r{i}") for i in range(4)]
    s = strategy_v1(fleet, max_excess_requests=2, max_excess_ratio=0.0)
    hot = DOCS[0]
    rng = random.Random(5)
    served: Counter[str] = Counter()
    in_flight: list[Deployment] = []
    for step in range(400):
        chosen = route(s, chat(hot, f"user {step}"), fleet)
        chosen.stats.in_flight += 1
        in_flight.append(chosen)
        served[chosen.id] += 1
        loads = [d.stats.in_flight for d in fleet]
        # The guard's invariant: nobody is more than the slack above the least loaded.
        assert max(loads) - min(loads) <= 2 + 1
        if len(in_flight) > 12:  # closed loop at concurrency 12: a random request finishes
            done = in_flight.pop(rng.randrange(len(in_flight)))
            done.stats.in_flight -= 1
    for d in fleet:
        assert served[d.id] / 400 < 0.25 * 1.5, served
    # The spilled requests warmed the other replicas, so later ones are hits everywhere.
    late = chat(hot, "late question")
    asyncio.run(s.prepare(late))
    assert all(tokens > 0 for tokens in late.routing_state.matched_tokens)  # in fleet order


def test_explanation_lists_candidates_and_counts() -> None:
    fleet = [deployment("a"), deployment("b")]
    s = strategy(fleet)
    route(s, chat(DOCS[1], "one"), fleet)
    call = chat(DOCS[1], "two")
    chosen = route(s, call, fleet)
    explanation = call.route
    assert explanation["strategy"] == "prefix_kv_aware"
    assert explanation["outcome"] == "hit"
    assert explanation["matched_blocks"] > 0
    assert explanation["prompt_tokens_est"] >= explanation["matched_tokens"]
    assert set(explanation["candidates"]) == {"a", "b"}
    other = "b" if chosen.id == "a" else "a"
    assert explanation["candidates"][other]["matched_tokens"] == 0


def test_failover_attempt_excludes_the_failed_replica_and_records_there() -> None:
    fleet = [deployment("a"), deployment("b")]
    s = strategy(fleet)
    first = route(s, chat(DOCS[2], "q"), fleet)
    call = chat(DOCS[2], "q2")
    asyncio.run(s.prepare(call))
    survivor = [d for d in fleet if d is not first]
    decision = s.choose(call, survivor)
    assert decision.deployment is survivor[0]
    assert decision.explanation["outcome"] == "spill"


def test_admin_stats_show_the_affinity_table_size() -> None:
    config = """
providers: { a: { type: mock }, b: { type: mock } }
models:
  - name: m
    deployments: [ { provider: a, model: m }, { provider: b, model: m } ]
routing: { strategy: prefix_kv_aware, prefix: { block_chars: 64 } }
"""
    with run_gateway(config) as gateway:
        before = httpx.get(gateway.url + "/admin/stats").json()["models"][0]
        assert before["affinity_entries"] == 0
        httpx.post(gateway.base_url + "/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "x" * 700}]})
        after = httpx.get(gateway.url + "/admin/stats").json()["models"][0]
        # 10 bytes of role marker + 700 chars = 710 bytes: 11 whole 64-byte blocks.
        assert after["affinity_entries"] == 11


def test_v1_a_short_shared_prefix_does_not_pull_new_conversations() -> None:
    # One system prompt for everyone, short next to each user's own context: new users are
    # placed by load (cold), not piled onto the replica that served the system prompt first.
    fleet = [deployment(f"r{i}") for i in range(4)]
    s = strategy_v1(fleet)
    system = "You are a helpful assistant. " * 20  # ~560 chars
    homes: dict[int, Deployment] = {}
    for user in range(8):
        context = f"user {user} history: " + ("notes " * 300)  # ~1,800 chars, all their own
        call = chat(system, context + "first question?")
        homes[user] = route(s, call, fleet)
        homes[user].stats.in_flight += 1  # the user's conversation keeps it busy
        assert call.route["outcome"] == "cold"
    assert set(homes.values()) == set(fleet)
    # A user's next turn covers mostly their own context: it follows it home.
    call = chat(system, f"user 3 history: {'notes ' * 300}first question? And then?")
    assert route(s, call, fleet) is homes[3]
    assert call.route["outcome"] == "hit"


def test_v1_min_match_ratio_zero_follows_any_match() -> None:
    fleet = [deployment(f"r{i}") for i in range(4)]
    s = strategy_v1(fleet, min_match_ratio=0.0)
    system = "You are a helpful assistant. " * 20
    first = route(s, chat(system, "user 0 " + "notes " * 300), fleet)
    first.stats.in_flight += 1
    call = chat(system, "user 1 " + "notes " * 300)
    assert route(s, call, fleet) is first  # the system prompt's blocks win over load
    assert call.route["outcome"] == "hit"


def test_a_new_image_is_cold_even_where_other_images_were_served() -> None:
    fleet = [deployment("a"), deployment("b")]
    s = strategy(fleet)
    route(s, chat("Describe.", "what is this?", bytes([1]) * 5000), fleet)
    call = chat("Describe.", "what is this?", bytes([2]) * 5000)
    route(s, call, fleet)
    assert call.route["outcome"] == "cold"


def test_explanation_is_bounded_on_large_fleets() -> None:
    fleet = [deployment(f"r{i}") for i in range(40)]
    s = strategy(fleet)
    home = route(s, chat(DOCS[3], "first"), fleet)
    call = chat(DOCS[3], "second")
    chosen = route(s, call, fleet)
    assert chosen is home
    assert len(call.route["candidates"]) <= 8
    assert home.id in call.route["candidates"]


def _after_traffic(capacity_tokens: int, *, first_in_flight: bool = False
                   ) -> tuple[PrefixKVAware, list[Deployment], Deployment, Call]:
    """DOCS[0] is asked about at t=0 (still being answered with ``first_in_flight``); then, a
    second apart, 24 other documents. Returns the strategy, fleet, DOCS[0]'s home and call."""
    clock = FakeClock(1_000.0)
    fleet = [deployment(f"r{i}", kv_capacity_tokens=capacity_tokens) for i in range(2)]
    s = PrefixKVAware(fleet, PrefixRoutingSettings(block_chars=64),
                      MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300,
                                          clock=clock), clock=clock)
    first = chat(DOCS[0], "first question")
    home = route(s, first, fleet, finish=not first_in_flight)
    for i in range(24):
        clock.now_s += 1.0
        route(s, chat(f"Other {i}: " + "consectetur adipiscing elit " * 60, "q"), fleet)
    clock.now_s += 1.0
    return s, fleet, home, first


def _asked_again(s: PrefixKVAware, fleet: list[Deployment], home: Deployment,
                 question: str) -> dict[str, object]:
    """DOCS[0] asked about again: that decision's explanation, for its home."""
    call = chat(DOCS[0], question)
    asyncio.run(s.prepare(call))
    explanation = s.choose(call, fleet).explanation
    candidates = explanation["candidates"]
    assert isinstance(candidates, dict)
    return {"home_matched": candidates[home.id]["matched_tokens"],
            "outcome": explanation["outcome"], "stats": s.describe()[home.id]}


def _return_after_traffic(capacity_tokens: int) -> dict[str, object]:
    s, fleet, home, _ = _after_traffic(capacity_tokens)
    return _asked_again(s, fleet, home, "second question")


def test_a_prefix_its_replica_has_since_evicted_counts_as_cold_there() -> None:
    # Each replica holds 2,000 tokens and was sent about 12 documents of ~420 tokens within
    # 25 s: a block untouched for ~10 s is gone, and DOCS[0] was last served 25 s ago. The
    # index (TTL 300 s) still lists it; the match is cut to what can still be there.
    evicting = _return_after_traffic(2_000)
    stats = evicting["stats"]
    assert isinstance(stats, dict) and stats["kv_residency_s"] < 15
    assert evicting["home_matched"] == 0 and evicting["outcome"] == "cold"
    # With room for everything it was sent, the same history is a hit.
    roomy = _return_after_traffic(100_000)
    assert isinstance(roomy["stats"], dict) and roomy["stats"]["kv_residency_s"] is None
    assert roomy["home_matched"] > 300 and roomy["outcome"] == "hit"


def test_the_resident_links_are_the_leading_run_served_since_the_cut() -> None:
    served = {("r0", h): t for h, t in zip(range(5), (10, 10, 8, 8, 5), strict=True)}

    def served_s(deployment_id: str, block_hash: int) -> float | None:
        return served.get((deployment_id, block_hash))

    hashes = list(range(5))
    assert _links_served_since(served_s, "r0", hashes, 5, 8.0) == 4
    assert _links_served_since(served_s, "r0", hashes, 5, 9.0) == 2
    assert _links_served_since(served_s, "r0", hashes, 3, 0.0) == 3
    assert _links_served_since(served_s, "r0", hashes, 5, 11.0) == 0
    assert _links_served_since(served_s, "r1", hashes, 5, 0.0) == 0  # not tracked there


def test_a_prefix_a_request_in_flight_still_uses_survives_the_residency_cut() -> None:
    # As in the evicting case above, but the first question about DOCS[0] is still being
    # answered: its blocks are in use, so the engine cannot have evicted them.
    s, fleet, home, first = _after_traffic(2_000, first_in_flight=True)
    matched = _asked_again(s, fleet, home, "second question")["home_matched"]
    assert isinstance(matched, int) and matched > 300
    answer(s, first, home)  # done: the cut applies again
    assert _asked_again(s, fleet, home, "third question")["home_matched"] == 0


def test_images_are_sized_by_the_vision_tokens_the_replicas_declare() -> None:
    # tiny-llava's 576 tokens per 512x512 image where the size rule estimates 3,699: each
    # replica's 5,120-token KV holds eight images, not one. Twelve images a second apart
    # split 6/6, and asked about again they are still there (sized by the estimate, each
    # replica's KV would turn over every few seconds and the second round find them gone).
    clock = FakeClock(1_000.0)
    fleet = [deployment(name, kv_capacity_tokens=5_120, image_tokens=576)
             for name in ("r0", "r1")]
    s = PrefixKVAware(fleet, PrefixRoutingSettings(block_chars=64),
                      MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300,
                                          clock=clock), clock=clock)
    images = [png(512, 512) + bytes([i]) for i in range(12)]
    placed = []
    for image in images:
        clock.now_s += 1.0
        placed.append(route(s, chat("You describe photos.", "What is in it?", image), fleet))
    assert Counter(d.id for d in placed) == {"r0": 6, "r1": 6}
    for image, home in zip(images, placed, strict=True):
        clock.now_s += 1.0
        call = chat("You describe photos.", "And the colours?", image)
        assert route(s, call, fleet) is home
        assert call.route["outcome"] == "hit"
    assert all(stats["kv_residency_s"] is None for stats in s.describe().values())


def test_a_prefix_cut_as_evicted_is_known_where_it_was_sent() -> None:
    # DOCS[0] is cold everywhere after the traffic (evicting history), but its replica was
    # sent it within the horizon: the scorer is told so (``known``), to price taking it back
    # there as restoring that replica's working set, not growing it (test_ttft_scorer).
    s, fleet, home, _ = _after_traffic(2_000)
    call = chat(DOCS[0], "second question")
    asyncio.run(s.prepare(call))
    state = call.routing_state
    assert state.matched_tokens == [0, 0]
    other = 1 - fleet.index(home)
    assert state.known_tokens[fleet.index(home)] > 300 and state.known_tokens[other] == 0
    # Without the cut (room for everything it was sent), nothing is known beyond the match.
    s, fleet, home, _ = _after_traffic(100_000)
    call = chat(DOCS[0], "second question")
    asyncio.run(s.prepare(call))
    assert call.routing_state.known_tokens is None
