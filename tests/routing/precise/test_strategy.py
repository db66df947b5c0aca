"""precise_kv's choice from exact hits: GPU and CPU tier priced by their times, pending bursts,
degraded fallback, the no-tokenizer event clock, and the predicted-TTFT scorer's spill."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment
from kvgate.request.parse import parse_call
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.precise.replica import ReplicaEventState
from kvgate.routing.precise.strategy import PreciseKVAware
from kvgate.vllm_compat.kv_events import BlockRemoved, BlockStored, KVEventBatch
from tests.routing.factories import deployment

PROFILE = "kvgate-sim:llama-3.1-8b-h100"
DOC = "Tell me about kv caches: " + "the quick brown fox jumps over the lazy dog " * 30
EVENTS = KVEventsSettings(endpoint="tcp://127.0.0.1:1")


def fleet(n: int, **settings: Any) -> list[Deployment]:
    settings = {"tokenizer": PROFILE, "kv_events": EVENTS, **settings}
    return [deployment(f"r{i}", **settings) for i in range(n)]


def strategy(deployments: list[Deployment], **precise: Any) -> PreciseKVAware:
    routing = RoutingSettings(strategy="precise_kv", precise=precise)
    s = PreciseKVAware(deployments, routing,
                       MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300))
    for d in deployments:  # as if each replica's replay had synced it
        replica(s, d).synced("test")
    return s


def replica(s: PreciseKVAware, d: Deployment) -> ReplicaEventState:
    state = s._plans[d].state
    assert state is not None
    return state


def chat(content: str) -> Call:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return parse_call(orjson.dumps(body), "chat", models={"m"}, max_image_bytes=1 << 20)


def keys(s: PreciseKVAware, content: str) -> tuple[int, ...]:
    return s._hashers[0].hash_call(chat(content)).keys


def feed(state: ReplicaEventState, *events: Any, medium: str = "GPU") -> None:
    seq = state.next_seq or 0
    state.apply(seq, KVEventBatch(ts=0.0, events=list(events)), live=False)


def stored(hashes: tuple[int, ...], medium: str = "GPU") -> BlockStored:
    return BlockStored(block_hashes=list(hashes), parent_block_hash=None,
                       token_ids=[1] * 16 * len(hashes), block_size=16, lora_id=None,
                       medium=medium, lora_name=None)


def route(s: PreciseKVAware, call: Call, candidates: list[Deployment]) -> dict[str, Any]:
    asyncio.run(s.prepare(call))
    decision = s.choose(call, candidates)
    s.on_dispatched(call, decision.deployment)
    return {"deployment": decision.deployment, **decision.explanation}


def test_a_cpu_tier_hit_costs_its_load_time_against_the_gpu_hit_and_a_cold_prefill() -> None:
    # r1 holds 14 blocks on the GPU, r2 the whole prompt in the CPU tier. Which is cheaper
    # depends on how fast the CPU tier loads against how fast the replica prefills (10k
    # tokens/s by default), not on a fixed weight.
    for load_tokens_per_s, winner in ((1_000.0, 1), (1_000_000.0, 2)):
        d = fleet(3)
        s = strategy(d, offload_load_tokens_per_s=load_tokens_per_s)
        doc_keys = keys(s, DOC + " q")
        feed(replica(s, d[1]), stored(doc_keys[:14]))
        feed(replica(s, d[2]), stored(doc_keys, medium="cpu"))
        result = route(s, chat(DOC + " another"), d)
        assert result["deployment"] is d[winner], load_tokens_per_s
        gpu, cpu = result["candidates"]["r1"], result["candidates"]["r2"]
        assert gpu["gpu_tokens"] == 14 * 16 and gpu["matched_tokens"] == 14 * 16
        assert cpu["offloaded_tokens"] > 14 * 16 and cpu["matched_tokens"] == 0
        assert cpu["uncached_tokens"] < gpu["uncached_tokens"]
    # With the GPU copy evicted, the fast CPU tier still beats a cold prefill anywhere.
    feed(replica(s, d[1]), BlockRemoved(block_hashes=list(doc_keys[:14]), medium="GPU"))
    assert route(s, chat(DOC + " third"), d)["deployment"] is d[2]


def test_a_burst_of_a_new_prefix_sticks_through_pending_blocks() -> None:
    d = fleet(4)
    s = strategy(d)
    first = route(s, chat(DOC + " one"), d)
    assert first["outcome"] == "cold"
    for k in range(3):  # no events yet: the replica has not scheduled the first request
        again = route(s, chat(DOC + f" more {k}"), d)
        assert again["deployment"] is first["deployment"] and again["outcome"] == "hit"


def test_degraded_replica_uses_approximate_affinity() -> None:
    d = fleet(2)
    s = strategy(d)
    home = route(s, chat(DOC + " one"), d)["deployment"]
    for state in (replica(s, x) for x in d):
        state.drop("test: events lost")
    result = route(s, chat(DOC + " two"), d)
    assert result["deployment"] is home and result["source"] == "degraded"
    assert result["outcome"] == "hit"


def test_a_hot_prefix_spills_when_its_queue_costs_more_than_a_cold_prefill() -> None:
    d = fleet(3)
    s = strategy(d)
    doc_keys = keys(s, DOC + " q")
    feed(replica(s, d[0]), stored(doc_keys))
    first = route(s, chat(DOC + " hot"), d)
    assert first["deployment"] is d[0] and first["outcome"] == "hit"
    # Long prompts queued at r0 (dispatched, no first token yet): waiting behind them now
    # costs more than computing the whole prompt on an idle replica.
    for k in range(6):
        route(s, chat(f"unrelated {k} " + "filler words here " * 200), [d[0]])
    result = route(s, chat(DOC + " hot again"), d)
    assert result["deployment"] is not d[0] and result["outcome"] == "spill"
    costs = {rid: c["predicted_cost_ms"] for rid, c in result["candidates"].items()}
    assert costs["r0"] > costs[result["deployment"].id]
    assert result["runner_up_margin_ms"] >= 0


def test_without_tokenizer_affinity_expires_with_the_replica_eviction_clock() -> None:
    d = fleet(2, tokenizer=None)
    s = strategy(d)
    home = route(s, chat(DOC + " one"), d)["deployment"]
    state = replica(s, home)
    assert s.describe()[home.id]["matching"] == "event_clock"
    feed(state, stored(tuple(range(1000, 1100))))  # the replica holds 100 blocks at most
    assert route(s, chat(DOC + " two"), d)["deployment"] is home
    # ...then evicts a whole cache's worth: whatever we sent there before is gone.
    feed(state, BlockRemoved(block_hashes=list(range(1000, 1100)), medium="GPU"))
    result = route(s, chat(DOC + " three"), d)
    assert result["candidates"][home.id]["matched_tokens"] == 0
    assert result["source"] == "event_clock"


def test_secret_replica_hashes_switch_to_token_blocks() -> None:
    d = fleet(2, hash_algo="xxhash")  # no hash_seed: vLLM seeds xxhash with a random secret
    s = strategy(d)
    assert {v["matching"] for v in s.describe().values()} == {"token_blocks"}
    keys_ = keys(s, DOC + " q")
    assert s._hashers[0].token_blocks and len(keys_) > 10


def test_a_prompt_cached_nowhere_goes_where_the_least_prefill_is_queued() -> None:
    d = fleet(3)
    s = strategy(d)
    route(s, chat("first long prompt " + "words " * 300), [d[0]])
    route(s, chat("second, shorter " + "words " * 100), [d[1]])
    result = route(s, chat(DOC + " cold"), d)
    assert result["outcome"] == "cold" and result["deployment"] is d[2]
    # r2 now has the cold prompt queued; the next cold one goes to the shortest queue, r1.
    assert route(s, chat("another " + DOC), d)["deployment"] is d[1]


def test_a_prefix_the_events_say_was_evicted_is_known_where_it_was_sent() -> None:
    # The replica stored the document's blocks and then evicted them: the exact index says
    # cold everywhere, the index of what was sent says it went there. The scorer is told
    # (``known``), to price taking it back there as restoring that replica's working set.
    d = fleet(2)
    s = strategy(d)
    home = route(s, chat(DOC + " one"), d)["deployment"]
    doc_keys = keys(s, DOC + " one")
    feed(replica(s, home), stored(doc_keys),
         BlockRemoved(block_hashes=list(doc_keys), medium="GPU"))
    call = chat(DOC + " two")
    asyncio.run(s.prepare(call))
    state = call.routing_state
    here, other = d.index(home), 1 - d.index(home)
    assert state.matched_tokens == [0, 0]
    assert state.known_tokens[here] > 100 and state.known_tokens[other] == 0
