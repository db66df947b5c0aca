"""Write-behind bookkeeping: the queue itself, and prefix_kv_aware deciding exactly as it does
in line while its dispatches and releases wait for the loop (as in the gateway)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from kvgate.config.schema import PrefixRoutingSettings, RoutingSettings, Settings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.gateway.compose import build_gateway
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.precise.strategy import PreciseKVAware
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.routing.write_behind import WriteBehind
from tests.routing.factories import deployment
from tests.routing.precise.test_strategy import DOC, fleet, replica
from tests.routing.precise.test_strategy import chat as precise_chat
from tests.routing.test_prefix_kv_aware import DOCS, chat
from tests.support.clock import FakeClock

# -- the queue --------------------------------------------------------------------------------


def test_disabled_runs_each_call_at_once() -> None:
    seen: list[int] = []
    later = WriteBehind(enabled=False)

    async def main() -> None:
        later(seen.append, 1)
        assert seen == [1] and later.pending == 0

    asyncio.run(main())


def test_without_a_running_loop_it_runs_at_once() -> None:
    seen: list[int] = []
    later = WriteBehind(enabled=True)
    later(seen.append, 1)
    later(seen.append, 2)
    assert seen == [1, 2] and later.pending == 0


def test_queued_calls_run_in_order_once_the_task_yields() -> None:
    seen: list[int] = []
    later = WriteBehind(enabled=True)

    async def main() -> None:
        for n in range(3):
            later(seen.append, n)
        assert seen == [] and later.pending == 3
        await asyncio.sleep(0)
        assert seen == [0, 1, 2] and later.pending == 0
        later(seen.append, 3)  # schedules again after a run
        await asyncio.sleep(0)
        assert seen == [0, 1, 2, 3]

    asyncio.run(main())


def test_flush_runs_the_queue_before_the_loop_does_and_the_loop_finds_it_empty() -> None:
    seen: list[int] = []
    later = WriteBehind(enabled=True)

    async def main() -> None:
        later(seen.append, 1)
        later.flush()
        assert seen == [1]
        await asyncio.sleep(0)
        assert seen == [1]

    asyncio.run(main())


class _CountingLoop(asyncio.SelectorEventLoop):
    """Counts the write-behind's callbacks the loop is asked to run."""

    write_behind_callbacks = 0

    def call_soon(  # type: ignore[override]
            self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        if getattr(callback, "__qualname__", "") == "WriteBehind._run":
            self.write_behind_callbacks += 1
        return super().call_soon(callback, *args, context=context)


def test_a_call_queued_after_a_readers_flush_still_runs_when_the_loop_turns() -> None:
    """A reader's flush leaves the scheduled callback in place (one per loop step, not one
    per call): what is queued after it runs with that callback."""
    seen: list[int] = []
    later = WriteBehind(enabled=True)

    async def main() -> None:
        later(seen.append, 1)
        later.flush()
        later(seen.append, 2)
        later(seen.append, 3)
        assert seen == [1]
        await asyncio.sleep(0)
        assert seen == [1, 2, 3]

    loop = _CountingLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert loop.write_behind_callbacks == 1


def test_a_failing_call_is_logged_and_the_rest_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    later = WriteBehind(enabled=True)

    def broken(_: int) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        later(seen.append, 1)
        later(broken, 2)
        later(seen.append, 3)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="kvgate.routing"):
        asyncio.run(main())
    assert seen == [1, 3]
    assert "routing bookkeeping" in caplog.text and "boom" in caplog.text


# -- prefix_kv_aware with its bookkeeping behind --------------------------------------------


def _strategy(fleet: list[Deployment], clock: FakeClock, index_clock: FakeClock, *,
              write_behind: bool) -> PrefixKVAware:
    return PrefixKVAware(
        fleet, PrefixRoutingSettings(block_chars=64),
        MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300, clock=index_clock),
        clock=clock, write_behind=write_behind)


def test_a_request_decided_before_the_loop_turns_sees_the_dispatch_before_it() -> None:
    """A burst: the second request for a prompt is decided in the same loop step as the
    first one's dispatch; it must find the prompt where the first went (a hit), and the
    first's queued prefill there."""
    fleet = [deployment(f"d{i}") for i in range(4)]
    clock = FakeClock()
    s = _strategy(fleet, clock, clock, write_behind=True)

    async def main() -> tuple[Any, Any, int]:
        first, second = chat(DOCS[0], "q1"), chat(DOCS[0], "q2")
        await s.prepare(first)
        chosen = s.choose(first, fleet).deployment
        s.on_dispatched(first, chosen)
        pending = s.bookkeeping.pending
        await s.prepare(second)  # no yield in between (the memory index answers at once)
        decision = s.choose(second, fleet)
        return chosen, decision, pending

    chosen, decision, pending = asyncio.run(main())
    assert pending == 1
    assert decision.deployment is chosen
    assert decision.explanation["outcome"] == "hit"
    assert decision.explanation["matched_tokens"] > 0


def _events(seed: int) -> list[tuple[str, int, float]]:
    """A random run: (event, argument, clock step) with event new / first / release /
    yield."""
    rng = random.Random(seed)
    return [(rng.choice(["new", "new", "first", "release", "release", "yield"]),
             rng.randrange(1 << 30), rng.choice([0.0, 0.001, 0.02, 0.3, 2.0]))
            for _ in range(400)]


@pytest.mark.parametrize("seed", range(4))
def test_decisions_and_learned_state_are_those_of_the_in_line_strategy(seed: int) -> None:
    """The same random run (bursts, streams and blocking answers, engine usage, the clock
    moving between an event and the flush that applies it) on an in-line and a write-behind
    strategy: every decision, its explanation and the ledger's learned figures are equal.

    The index's clock moves only where both have flushed (its ticks are whole seconds; a
    flush microseconds later in the gateway lands on the same tick but for a second's edge,
    which its readers allow for)."""
    fleet = [deployment(f"d{i}", kv_capacity_tokens=6_000) for i in range(4)]
    clock, index_clock = FakeClock(), FakeClock()
    inline = _strategy(fleet, clock, index_clock, write_behind=False)
    behind = _strategy(fleet, clock, index_clock, write_behind=True)
    rng = random.Random(seed)
    flushed_early = 0

    async def main() -> list[tuple[str, Any, Any]]:
        nonlocal flushed_early
        seen: list[tuple[str, Any, Any]] = []
        in_flight: list[tuple[Call, Call, Deployment, bool]] = []
        for number, (event, arg, step_s) in enumerate(_events(seed)):
            clock.now_s += step_s
            if event == "new":
                question = f"question {arg % 7}" if arg % 3 else f"new question {number}"
                a, b = (chat(DOCS[arg % len(DOCS)], question) for _ in range(2))
                await inline.prepare(a)
                flushed_early += behind.bookkeeping.pending > 0
                await behind.prepare(b)
                da, db = inline.choose(a, fleet), behind.choose(b, fleet)
                seen.append(("decision", (da.deployment.id, da.explanation),
                             (db.deployment.id, db.explanation)))
                inline.on_dispatched(a, da.deployment)
                behind.on_dispatched(b, db.deployment)
                in_flight.append((a, b, da.deployment, False))
            elif event in ("first", "release") and in_flight:
                i = arg % len(in_flight)
                a, b, where, first_seen = in_flight[i]
                if event == "first" and not first_seen:
                    inline.on_first_token(a, where)
                    behind.on_first_token(b, where)
                    in_flight[i] = (a, b, where, True)
                elif event == "release":
                    del in_flight[i]
                    output = rng.randrange(0, 50)
                    usage = (EngineUsage(prompt_tokens=rng.randrange(500, 3_000),
                                         cached_tokens=rng.randrange(0, 500))
                             if rng.random() < 0.7 else None)
                    inline.on_released(a, where, output, usage)
                    behind.on_released(b, where, output, usage)
            elif event == "yield":
                await asyncio.sleep(0)
                assert behind.bookkeeping.pending == 0
                index_clock.now_s = clock.now_s  # both index up to date: ticks may move
        seen.append(("state", inline.describe(), behind.describe()))
        seen.append(("entries", inline.affinity_entries(), behind.affinity_entries()))
        return seen

    seen = asyncio.run(main())
    assert flushed_early > 20  # decisions really read through queued bookkeeping
    for what, expected, got in seen:
        assert got == expected, what


# -- precise_kv with its bookkeeping behind ---------------------------------------------------


def test_precise_a_burst_decided_before_the_loop_turns_sticks_through_pending_blocks() -> None:
    """precise_kv's dispatch marks the prompt's blocks pending on its replica (about 65 us
    for an 8k-token prompt, so it runs write-behind in the gateway); the next request of a
    burst, decided before the loop turns, still finds them there."""
    d = fleet(4)
    s = PreciseKVAware(d, RoutingSettings(strategy="precise_kv"),
                       MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300),
                       write_behind=True)
    for each in d:
        replica(s, each).synced("test")

    async def main() -> list[tuple[Any, Any, int, int]]:
        seen = []
        for k in range(4):
            call = precise_chat(DOC + f" question {k}")
            await s.prepare(call)
            decision = s.choose(call, d)
            s.on_dispatched(call, decision.deployment)
            s.on_first_token(call, decision.deployment)
            seen.append((decision.deployment, decision.explanation["outcome"],
                         s.bookkeeping.pending,
                         sum(replica(s, each).index.num_pending_blocks for each in d)))
        await asyncio.sleep(0)
        return seen

    seen = asyncio.run(main())
    first = seen[0][0]
    assert [outcome for _, outcome, _, _ in seen] == ["cold", "hit", "hit", "hit"]
    assert all(where is first for where, _, _, _ in seen)
    # Each request's bookkeeping waited for the loop; the next decision applied it first.
    assert [queued for _, _, queued, _ in seen] == [2, 2, 2, 2]
    assert seen[0][3] == 0 and seen[1][3] > 0
    assert s.bookkeeping.pending == 0
    # All four dispatches and first tokens reached the ledger: four decoding there, none
    # waiting for its prefill.
    described = s.describe()[first.id]
    assert described["decoding_requests"] == 4 and described["waiting_requests"] == 0


@pytest.mark.parametrize("name", ["prefix_kv_aware", "precise_kv"])
def test_the_gateway_builds_its_kv_aware_strategies_write_behind(name: str) -> None:
    settings = Settings.model_validate({
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "deployments": [
            {"provider": "mock", "model": "m", "id": f"r{i}"} for i in range(2)]}],
        "routing": {"strategy": name, "health_check_interval_s": 0},
    })
    route = build_gateway(settings).routes["m"]
    strategy = route.strategy
    assert strategy.name == name
    assert isinstance(strategy, PrefixKVAware | PreciseKVAware)

    async def main() -> int:
        call = chat(DOCS[0], "q")
        await strategy.prepare(call)
        strategy.on_dispatched(call, strategy.choose(call, route.deployments).deployment)
        return strategy.bookkeeping.pending

    assert asyncio.run(main()) == 1
