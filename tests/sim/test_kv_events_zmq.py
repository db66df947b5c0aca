"""KV events from a real replica over ZMQ, decoded against vLLM's documented schema."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import openai
import pytest
import zmq

from kvgate.sim.settings import ReplicaSettings
from kvgate.vllm_compat.hashing import BlockHasher, to_event_hash
from kvgate.vllm_compat.kv_events import END_SEQ, BlockRemoved, BlockStored, decode_event_batch
from tests.sim.conftest import LLAMA, replica_process

MODEL = LLAMA.served_model_name


@pytest.fixture(scope="module")
def events_replica() -> Iterator[ReplicaSettings]:
    with replica_process(profile="llama-3.1-8b-h100", time_scale=20.0, kv_blocks=64,
                         kv_events_endpoint="auto", kv_events_replay_endpoint="auto"
                         ) as (settings, _):
        yield settings


def _receive(sub: zmq.Socket[bytes], timeout_ms: int = 3000) -> list[list[bytes]]:
    messages = []
    while sub.poll(timeout_ms):
        messages.append(sub.recv_multipart())
        timeout_ms = 300
    return messages


def test_publish_decode_and_replay(events_replica: ReplicaSettings) -> None:
    assert events_replica.kv_events_endpoint and events_replica.kv_events_replay_endpoint
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv-events")
    sub.connect(events_replica.kv_events_endpoint)
    time.sleep(0.3)  # ZMQ slow joiner: let the subscription reach the publisher
    messages: Any = [{"role": "user", "content": "tell me about kv caches " * 8}]
    with openai.OpenAI(base_url=events_replica.url + "/v1", api_key="none") as client:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    received = _receive(sub)
    sub.close(linger=0)
    assert received
    topics, seqs, payloads = zip(*received, strict=True)
    assert set(topics) == {b"kv-events"}
    numbers = [int.from_bytes(s, "big") for s in seqs]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))

    # Raw schema: [ts, [events], dp_rank], events are maps tagged by "type".
    raw = msgspec.msgpack.decode(payloads[0])
    assert isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], float) and raw[2] == 0
    stored_raw = raw[1][0]
    assert stored_raw["type"] == "BlockStored"
    assert {"block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
            "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind"} <= set(stored_raw)
    assert stored_raw["medium"] == "GPU" and stored_raw["block_size"] == 16

    # The hashes are exactly what a router computes from the prompt's token ids.
    conn_body = json.dumps({"messages": messages}).encode()
    conn = http.client.HTTPConnection(events_replica.host, events_replica.port, timeout=5)
    conn.request("POST", "/tokenize", body=conn_body)
    tokens = json.loads(conn.getresponse().read())["tokens"]
    conn.close()
    expected = [to_event_hash(h) for h in BlockHasher("sha256").hash_blocks(tokens, 16)]
    stored = [e for p in payloads for e in decode_event_batch(p).events
              if isinstance(e, BlockStored)]
    published = [h for e in stored for h in e.block_hashes]
    assert published[:len(expected)] == expected
    assert len(published) > len(expected)  # decode blocks are stored too

    # Replay from the first sequence returns the same payloads, then the end marker.
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(events_replica.kv_events_replay_endpoint)
    dealer.send_multipart([b"", numbers[0].to_bytes(8, "big")])
    replayed = []
    while dealer.poll(3000):
        frames = dealer.recv_multipart()
        if frames[2] == END_SEQ:
            assert frames == [b"", b"", END_SEQ, b""]
            break
        assert frames[0] == b"" and frames[1] == b"kv-events"
        replayed.append((int.from_bytes(frames[2], "big"), frames[3]))
    else:
        pytest.fail("no end-of-replay marker")
    dealer.close(linger=0)
    assert replayed[:len(payloads)] == list(zip(numbers, payloads, strict=True))


def test_eviction_is_published(events_replica: ReplicaSettings) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    assert events_replica.kv_events_endpoint
    sub.connect(events_replica.kv_events_endpoint)
    time.sleep(0.3)
    with openai.OpenAI(base_url=events_replica.url + "/v1", api_key="none") as client:
        for k in range(4):  # 4 x ~20 blocks through a 63-block pool forces evictions
            client.completions.create(model=MODEL, prompt=f"{k} " * 600, max_tokens=2)
    events = [e for m in _receive(sub) for e in decode_event_batch(m[2]).events]
    sub.close(linger=0)
    removed = [e for e in events if isinstance(e, BlockRemoved)]
    assert removed and all(len(e.block_hashes) == 1 for e in removed)
