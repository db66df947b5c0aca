"""A whole scorer decision in C (``_floats_native.decide``, TTFTScorer.choose's common case:
every deployment a candidate, no CPU-tier tokens, every KV size known or none, precise mode's
details or not):
the same pick, rotation and explanation, number for number, as the Python code it stands in
for, over long random runs that reach every branch (uniform and mixed matches, waits for KV
space, evictions, ties broken by held tokens, fill and rotation, fleets above and below the
explanation's eight candidates, reserved placements); and the cases it leaves to Python."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment
from kvgate.routing import _floats_native as native
from kvgate.routing import ttft_scorer
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from tests.routing.factories import deployment, finish_some
from tests.routing.native_compare import same
from tests.support.clock import FakeClock

Run = list[tuple[str, dict[str, Any], int]]


def _run(seed: int, replicas: int, calls: list[int], sized: bool = True) -> Run:
    """400 decisions on a fleet whose KV sizes are all known (``sized``) or none, with queues
    that fill and drain. ``calls[0]`` counts the decisions the C kernel made."""
    rng = random.Random(seed)
    sizes = [rng.choice([3_000, 6_000, 20_000, 400_000]) for _ in range(replicas)]
    fleet = [deployment(f"r{i}", **({"kv_capacity_tokens": size} if sized else {}))
             for i, size in enumerate(sizes)]
    clock = FakeClock(0.0)
    scorer = TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16, clock=clock)
    decide = ttft_scorer.native_decide

    def counted(*args: Any) -> Any:
        calls[0] += 1
        assert decide is not None
        return decide(*args)

    open_tickets: list[Ticket] = []
    out: Run = []
    for _ in range(400):
        clock.now_s += rng.choice([0.0, 0.01, 0.2, 3.0])
        prompt: float = rng.choice([64, 4_725, 8_192, 2_500.5])
        if rng.random() < 0.3:  # every replica holds the same (cold, or a prefix all serve)
            share = rng.choice([0, prompt // 2])
            matched = [share] * replicas
        else:
            matched = [rng.choice([0, 0, prompt // 2, prompt, 1_000]) for _ in fleet]
        known = ([rng.choice([0, 0, 500]) for _ in fleet] if rng.random() < 0.3 else None)
        # precise mode's per-candidate fields, for some candidates (merged into their entries)
        details = ({d: {"source": rng.choice(["precise", "event_clock"]), "gpu_tokens": i}
                    for i, d in enumerate(fleet) if rng.random() < 0.5}
                   if rng.random() < 0.3 else None)
        if decide is not None:
            ttft_scorer.native_decide = counted
        try:
            decision, pick = scorer.choose(fleet, prompt, matched, max(matched), known=known,
                                           details=details, reserve=rng.random() < 0.1)
        finally:
            ttft_scorer.native_decide = decide
        out.append((decision.deployment.id, decision.explanation, scorer._rotation))
        open_tickets.append(scorer.ledger.dispatched(
            pick, prompt - matched[pick], prompt_tokens=prompt, shared_key=pick,
            shared_tokens=matched[pick]))
        finish_some(scorer.ledger, open_tickets, rng, clock, 0.45)
    return out


@pytest.mark.parametrize(("seed", "replicas", "sized"), [
    (1, 1, True), (2, 3, True), (3, 8, True), (4, 9, True), (5, 64, True), (6, 300, True),
    (7, 3, False), (8, 9, False), (9, 64, False)])
def test_the_c_decision_is_the_python_decision(seed: int, replicas: int, sized: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert ttft_scorer.native_decide is native.decide  # the install built it
    calls = [0]
    with_c = _run(seed, replicas, calls, sized)
    assert calls[0] == 400  # every decision went through C
    monkeypatch.setattr(ttft_scorer, "native_decide", None)
    python = _run(seed, replicas, [0], sized)
    for (c_id, c_explanation, c_rotation), (p_id, p_explanation, p_rotation) in zip(
            with_c, python, strict=True):
        assert (c_id, c_rotation) == (p_id, p_rotation)
        assert same(c_explanation, p_explanation), (c_explanation, p_explanation)
    # The runs reached the branches the kernel has of its own.
    explanations = [e for _, e, _ in with_c]
    assert {"hit", "cold"} <= {e["outcome"] for e in explanations}
    entries = [entry for e in explanations for entry in e["candidates"].values()]
    if replicas > 1:
        # Waits and evictions need a known size: none without.
        assert any("eviction_ms" in entry for entry in entries) == sized
        assert any("kv_wait_ms" in entry for entry in entries) == sized
        assert len({rotation for _, _, rotation in with_c}) > 1  # ties broken in turn
    assert any("source" in entry for entry in entries)  # details merged
    if replicas > 8:  # the pick and the seven cheapest others, or the seven cheapest
        assert {len(e["candidates"]) for e in explanations} <= {7, 8}


def test_failover_subsets_some_sizes_unknown_and_offloaded_tokens_stay_in_python() -> None:
    fleet = [deployment("a", kv_capacity_tokens=10_000), deployment("b")]  # b: size unknown
    scorer = TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16,
                        clock=FakeClock(0.0))
    calls = []
    decide = ttft_scorer.native_decide

    def counted(*args: Any) -> Any:
        calls.append(1)
        assert decide is not None
        return decide(*args)

    ttft_scorer.native_decide = counted
    try:
        scorer.choose(fleet, 100, [0, 0], 0)
        known_fleet = [deployment("c", kv_capacity_tokens=10_000),
                       deployment("d", kv_capacity_tokens=10_000)]
        known_scorer = TTFTScorer("t", known_fleet, PrefixRoutingSettings(), block_tokens=16,
                                  clock=FakeClock(0.0))
        known_scorer.choose(known_fleet[1:], 100, [0], 0, positions=[1])
        known_scorer.choose(known_fleet, 100, [0, 0], 0, offloaded=[0.0, 50.0])
        assert not calls
        known_scorer.choose(known_fleet, 100, [0, 0], 0)
        assert calls == [1]
    finally:
        ttft_scorer.native_decide = decide


def _args(fleet: list[Deployment], scorer: TTFTScorer) -> list[Any]:
    ledger = scorer.ledger
    return ["t", fleet, 100, [0] * len(fleet), 0, None, ledger.base, ledger.rate, ledger.room,
            ledger.ttft_base, 1.0, 0.0, ledger.placed.totals(), scorer._capacity,
            scorer._inverse_capacity, ledger.replicas, ledger.admission_wait_s, 16, 0, None]


def test_bad_input_is_an_error_not_a_crash() -> None:
    fleet = [deployment("a", kv_capacity_tokens=10_000), deployment("b", kv_capacity_tokens=5)]
    scorer = TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16,
                        clock=FakeClock(0.0))
    scorer._refresh(0.0)  # the KV sizes read
    args = _args(fleet, scorer)
    pick, rotation, explanation, uncached = native.decide(*args)
    # b cannot hold the prompt: its eviction is priced, a takes it.
    assert (pick, rotation, uncached) == (0, 0, 100.0)
    assert explanation["outcome"] == "cold"
    assert explanation["candidates"]["b"]["eviction_ms"] > 0
    with pytest.raises(TypeError):
        native.decide(*args[:-1])
    with pytest.raises(TypeError):  # details: a dict or None
        native.decide(*[*args[:-1], [("a", {})]])
    _, _, explanation, _ = native.decide(*[*args[:-1], {fleet[1]: {"source": "precise"}}])
    assert explanation["candidates"]["b"]["source"] == "precise"
    assert "source" not in explanation["candidates"]["a"]
    with pytest.raises(ValueError):  # a figure missing for a candidate
        native.decide(*[*args[:3], [0], *args[4:]])
    with pytest.raises(ValueError):  # no candidate
        native.decide(*[args[0], [], args[2], [], *args[4:6], *([[]] * 4), *args[10:12],
                        *([[]] * 3), [], *args[16:]])
    with pytest.raises(TypeError):
        native.decide(*[*args[:1], tuple(fleet), *args[2:]])
    with pytest.raises(TypeError):
        native.decide(*[*args[:3], ["x", 0], *args[4:]])

    def broken(position: int, tokens: float) -> float:
        raise RuntimeError("the ledger failed")

    # b has no room for 100 tokens: its wait is asked for, and the error comes through.
    with pytest.raises(RuntimeError, match="the ledger failed"):
        native.decide(*[*args[:16], broken, *args[17:]])


def test_a_callback_that_changes_the_lists_is_an_error_not_a_stale_read() -> None:
    fleet = [deployment("a", kv_capacity_tokens=10_000), deployment("b", kv_capacity_tokens=5)]
    scorer = TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16,
                        clock=FakeClock(0.0))
    scorer._refresh(0.0)
    args = _args(fleet, scorer)
    matched = [0, 0]

    def growing(position: int, tokens: float) -> float:
        matched.extend(range(1_000))  # the list's storage moves
        return 1.0

    with pytest.raises(RuntimeError, match="changed during the decision"):
        native.decide(*[*args[:3], matched, *args[4:16], growing, *args[17:]])
