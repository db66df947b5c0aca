"""precise_kv end to end: `kvgate run` in front of `kvgate sim --kv-events` on loopback.

- a repeated prefix goes back to the replica that holds it, with exact hit tokens;
- when that replica evicts the prefix, the gateway's affinity is gone as soon as it has applied
  the event batch carrying the eviction;
- a deployment whose publisher is down routes approximately, without errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zmq

from kvgate.sim.profiles import get_profile
from kvgate.vllm_compat.hashing import BlockHasher, to_event_hash
from kvgate.vllm_compat.kv_events import BlockRemoved, decode_event_batch
from tests.sim.conftest import free_port_block
from tests.support.processes import RunningGateway, free_port, run_gateway

PROFILE = "llama-3.1-8b-h100"
SERVED = get_profile(PROFILE).served_model_name
KV_BLOCKS = 64  # 63 usable: four ~20-block prompts evict the first


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[dict[str, Any]]]:
    """`kvgate sim --kv-events` with two replicas; yields its --json description."""
    base = free_port_block(2)
    events = free_port_block(4)
    process = subprocess.Popen(
        [sys.executable, "-m", "kvgate", "sim", "--replicas", "2", "--base-port", str(base),
         "--kv-events", "--kv-events-port", str(events), "--profile", PROFILE,
         "--kv-blocks", str(KV_BLOCKS), "--time-scale", "50", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        replicas = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.startswith("{"):
                replicas = json.loads(line)["replicas"]
            if line.startswith("ready") or not line:
                break
        assert replicas is not None, "kvgate sim did not start"
        yield replicas
    finally:
        process.terminate()
        process.wait(timeout=10)


def config(replicas: list[dict[str, Any]], *, down: bool = False) -> str:
    deployments = []
    for index, replica in enumerate(replicas):
        events = {"endpoint": replica["kv_events"], "replay_endpoint": replica["replay"]}
        if down and index == 1:  # nobody publishes there
            events = {"endpoint": f"tcp://127.0.0.1:{free_port()}",
                      "replay_endpoint": f"tcp://127.0.0.1:{free_port()}"}
        deployments.append({"provider": f"p{index}", "model": SERVED, "id": f"replica-{index}",
                            "tokenizer": f"kvgate-sim:{PROFILE}", "kv_events": events})
    return json.dumps({
        "server": {"log_level": "warning"},
        "providers": {f"p{i}": {"type": "openai_compatible", "api_base": r["base_url"]}
                      for i, r in enumerate(replicas)},
        "models": [{"name": "m", "deployments": deployments}],
        "routing": {"strategy": "precise_kv", "max_attempts": 1,
                    "precise": {"replay_timeout_s": 0.5, "idle_probe_s": 1.0}},
        "cache": {"exact": {"enabled": False}},
    })


def kv_state(gateway: RunningGateway) -> dict[str, dict[str, Any]]:
    stats = httpx.get(gateway.url + "/admin/stats", timeout=5).json()
    return {d["id"]: d["kv_cache"] for d in stats["models"][0]["deployments"]}


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def ask(url: str, content: str, model: str = "m") -> dict[str, Any]:
    body = {"model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": content}]}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


DOC = "Tell me about kv caches: " + "the quick brown fox jumps over the lazy dog " * 30


def test_evictions_remove_affinity_within_one_event_batch(fleet: list[dict[str, Any]]) -> None:
    with run_gateway(config(fleet)) as gateway:
        wait_for(lambda: all(s["mode"] == "precise" for s in kv_state(gateway).values()))
        first = ask(gateway.url, DOC + " first question")
        home = first["kvgate"]["deployment"]
        wait_for(lambda: kv_state(gateway)[home]["blocks_tracked"] >= 15)

        again = ask(gateway.url, DOC + " second question")["kvgate"]
        assert again["deployment"] == home and again["route"]["outcome"] == "hit"
        assert again["route"]["source"] == "precise"
        assert again["route"]["matched_tokens"] >= 240  # every full block of the shared doc

        # The prefix's first block, as the gateway hashes it (the simulator's tokenizer).
        from kvgate.sim.prompt import PromptRenderer
        from kvgate.vllm_compat.sim_tokenizer import SimTokenizer

        rendered = PromptRenderer(get_profile(PROFILE), SimTokenizer()).render_chat(
            [{"role": "user", "content": DOC + " third question"}])
        first_block = to_event_hash(BlockHasher().hash_blocks(rendered.token_ids, 16)[0])

        # Evict it by sending other prompts straight to that replica, watching its events.
        replica = fleet[int(home.rsplit("-", 1)[1])]
        sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(replica["kv_events"])
        time.sleep(0.3)
        removal_seq = None
        try:
            for k in range(8):
                ask(replica["base_url"][:-3], f"{k} unrelated filler text " * 70, model=SERVED)
                while sub.poll(200):
                    _, seq, payload = sub.recv_multipart()
                    for event in decode_event_batch(payload).events:
                        if isinstance(event, BlockRemoved) and first_block in event.block_hashes:
                            removal_seq = int.from_bytes(seq, "big")
                if removal_seq is not None:
                    break
        finally:
            sub.close(linger=0)
        assert removal_seq is not None, "the replica never evicted the prefix"

        # As soon as the gateway has applied that batch, the replica no longer matches.
        wait_for(lambda: (kv_state(gateway)[home]["last_seq"] or -1) >= removal_seq, 5)
        after = ask(gateway.url, DOC + " third question")["kvgate"]["route"]
        assert after["candidates"][home]["matched_tokens"] == 0
        assert after["candidates"][home]["source"] == "precise"


def test_publisher_down_routes_approximately_without_errors(
    fleet: list[dict[str, Any]],
) -> None:
    with run_gateway(config(fleet, down=True)) as gateway:
        wait_for(lambda: kv_state(gateway)["replica-1"]["replay_failures_total"] >= 1)
        state = kv_state(gateway)
        assert state["replica-0"]["mode"] == "precise"
        assert state["replica-1"]["mode"] == "degraded"
        served = set()
        for k in range(6):
            result = ask(gateway.url, f"question {k} " + DOC)["kvgate"]
            served.add(result["deployment"])
            sources = {c["source"] for c in result["route"]["candidates"].values()}
            assert sources == {"precise", "degraded"}
        assert served == {"replica-0", "replica-1"}


def test_the_scorer_learns_each_replica_and_reads_its_kv_size(
        fleet: list[dict[str, Any]]) -> None:
    # The TTFT model end to end: streamed answers feed the replicas' fits, the scraper reads
    # each replica's KV size from vllm:cache_config_info, and decisions explain themselves.
    with run_gateway(config(fleet)) as gateway:
        url = gateway.base_url + "/chat/completions"
        for k in range(6):
            body = {"model": "m", "max_tokens": 4, "stream": True,
                    "messages": [{"role": "user", "content": f"{k} {DOC}"}]}
            with httpx.stream("POST", url, json=body, timeout=30) as response:
                assert response.status_code == 200
                _ = [line for line in response.iter_lines()]
        block_size = get_profile(PROFILE).block_size

        def learned() -> bool:
            ask(gateway.url, f"probe {DOC}")  # a decision re-reads the scraped figures
            state = kv_state(gateway)
            return all(s["kv_capacity_tokens"] == KV_BLOCKS * block_size
                       for s in state.values())

        wait_for(learned)
        state = kv_state(gateway)
        assert sum(s["ttft_samples"] for s in state.values()) >= 6
        assert all(s["waiting_requests"] == 0 and s["queued_prefill_tokens"] == 0
                   for s in state.values())
        route = ask(gateway.url, DOC + " again")["kvgate"]["route"]
        assert route["predicted_ttft_ms"] > 0 and "runner_up_margin_ms" in route
        assert all("predicted_cost_ms" in c for c in route["candidates"].values())
