"""precise_kv's choice from exact hits: GPU over CPU tier, pending bursts, degraded fallback,
the no-tokenizer event clock, and prefix_kv_aware's load guard kept."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment
from kvgate.request.parse import parse_call
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.load import InFlightLoad
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
    routing = RoutingSettings(strategy="precise_kv", precise=precise,
                              prefix={"max_excess_requests": 2, "max_excess_ratio": 0})
    s = PreciseKVAware(deployments, routing,
                       MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300),
                       InFlightLoad())
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


def test_exact_gpu_hit_beats_cpu_tier_beats_cold() -> None:
    d = fleet(3)
    s = strategy(d)
    doc_keys = keys(s, DOC + " q")
    feed(replica(s, d[1]), stored(doc_keys[:14]))
    feed(replica(s, d[2]), stored(doc_keys, medium="cpu"))
    result = route(s, chat(DOC + " another"), d)
    assert result["deployment"] is d[1] and result["outcome"] == "hit"
    assert result["matched_tokens"] == 14 * 16
    cpu = result["candidates"]["r2"]  # more tokens, but each at half a GPU token's worth
    assert cpu["offloaded_tokens"] > 14 * 16 and cpu["matched_tokens"] == cpu[
        "offloaded_tokens"] / 2
    # With the GPU copy evicted, the CPU tier (cheaper than recompute) wins over cold.
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


def test_load_guard_still_spreads_a_hot_prefix() -> None:
    d = fleet(3)
    s = strategy(d)
    doc_keys = keys(s, DOC + " q")
    feed(replica(s, d[0]), stored(doc_keys))
    d[0].stats.in_flight = 5
    result = route(s, chat(DOC + " hot"), d)
    assert result["deployment"] is not d[0] and result["outcome"] == "spill"
    assert not result["candidates"]["r0"]["eligible"]


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


def test_a_prompt_evicted_everywhere_goes_back_to_its_last_home_if_not_busier() -> None:
    d = fleet(3)
    s = strategy(d)
    first = route(s, chat(DOC + " one"), d)
    home = first["deployment"]
    assert first["outcome"] == "cold" and "returned_home" not in first
    # The replica ran it and later evicted it: no replica holds any of the prompt now.
    feed(replica(s, home), stored(keys(s, DOC + " one")))
    feed(replica(s, home), BlockRemoved(block_hashes=list(keys(s, DOC + " one")), medium="GPU"))
    for k in range(3):  # placed by load alone these would rotate over the three replicas
        again = route(s, chat(DOC + f" again {k}"), d)
        assert again["outcome"] == "cold" and again["matched_tokens"] == 0
        assert again["deployment"] is home and again["returned_home"] is True
        feed(replica(s, home), BlockRemoved(block_hashes=list(keys(s, DOC + f" again {k}")),
                                            medium="GPU"))
    # Its home busier than another replica: a cold prompt still goes to the least loaded.
    home.stats.in_flight = 1
    away = route(s, chat(DOC + " busy"), d)
    assert away["deployment"] is not home and "returned_home" not in away
