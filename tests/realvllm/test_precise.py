"""precise_kv fed by real vLLM KV events: exact hit tokens, image hashes, evictions.

The gateway tokenizes with the model's own tokenizer directory, renders the ChatML template,
expands images to their 576 vision tokens and hashes blocks the way vLLM does (image mm_hash
in the block's extra keys); these tests check the result against the engine's own answer
(``cached_tokens``) and its own events.
"""

from __future__ import annotations

import time

import pytest
import zmq

from kvgate.vllm_compat.kv_events import BlockRemoved, BlockStored, decode_event_batch
from tests.realvllm.client import (
    RealGateway,
    document,
    image,
    image_messages,
    question,
    text_messages,
    wait_for,
)
from tests.realvllm.conftest import KV_CACHE_TOKENS

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]

BLOCK = 32
IMAGE_TOKENS = 576
USABLE_BLOCKS = KV_CACHE_TOKENS // BLOCK


def wait_precise(gateway: RealGateway) -> None:
    wait_for(lambda: all(s.get("mode") == "precise" for s in gateway.kv_state().values()),
             what="every replica's events in sync")


def wait_applied(gateway: RealGateway, deployment: str, blocks: int) -> None:
    wait_for(lambda: gateway.kv_state()[deployment]["blocks_tracked"] >= blocks,
             what=f"{blocks} blocks confirmed by {deployment}'s events")


def test_text_hit_tokens_match_the_engine_exactly(gateway: RealGateway) -> None:
    wait_precise(gateway)
    doc = document("precise-text", 1500)
    first = gateway.ask("precise", text_messages(doc, question("precise", 0)))
    home = first.deployment
    assert first.cached_tokens == 0
    wait_applied(gateway, home, 1500 // BLOCK)
    second = gateway.ask("precise", text_messages(doc, question("precise", 1)))
    assert second.deployment == home
    assert second.route["source"] == "precise" and second.route["outcome"] == "hit"
    assert second.cached_tokens >= 1500 - BLOCK
    # The gateway's block hashes are vLLM's: it predicted exactly what the engine reused.
    assert second.route["matched_tokens"] == second.cached_tokens


def test_image_blocks_match_by_image_hash(gateway: RealGateway) -> None:
    wait_precise(gateway)
    url = image("precise-image")
    first = gateway.ask("precise", image_messages(url, question("precise-image", 0)))
    wait_applied(gateway, first.deployment, IMAGE_TOKENS // BLOCK)
    second = gateway.ask("precise", image_messages(url, question("precise-image", 1)))
    assert second.deployment == first.deployment
    assert second.cached_tokens >= IMAGE_TOKENS
    assert second.route["matched_tokens"] == second.cached_tokens


def test_follows_what_replicas_hold_not_what_it_routed(gateway: RealGateway) -> None:
    """Prompts sent to a replica around the gateway are found there from its events alone."""
    wait_precise(gateway)
    for deployment in ("vllm1", "vllm0"):
        url = image(f"around-{deployment}")
        seq_before = gateway.kv_state()[deployment]["last_seq"] or -1
        gateway.ask_replica(deployment, image_messages(url, "warm it"))
        wait_for(lambda d=deployment, s=seq_before: (  # type: ignore[misc]
            (gateway.kv_state()[d]["last_seq"] or -1) > s), what="the warm-up's events")
        answer = gateway.ask("precise", image_messages(url, question("around", 0)))
        assert answer.deployment == deployment, answer.route
        assert answer.route["source"] == "precise"
        assert answer.cached_tokens >= IMAGE_TOKENS
        assert answer.route["matched_tokens"] == answer.cached_tokens


def test_evictions_are_tracked_under_a_small_kv_budget(gateway: RealGateway) -> None:
    wait_precise(gateway)
    url = image("precise-evicted")
    first = gateway.ask("precise", image_messages(url, question("evicted", 0)))
    home = first.deployment
    wait_applied(gateway, home, IMAGE_TOKENS // BLOCK)

    replica = gateway.replica(home)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(replica.kv_events_endpoint)
    time.sleep(0.3)
    removed = stored = 0
    last_seq = -1
    try:
        # Each image prompt holds ~19 blocks; 9 of them overflow the replica's 128 blocks.
        for k in range(9):
            gateway.ask_replica(home, image_messages(image(f"flood-{k}"), "and this one?"))
            while sub.poll(300):
                _, seq, payload = sub.recv_multipart()
                last_seq = int.from_bytes(seq, "big")
                for event in decode_event_batch(payload).events:
                    if isinstance(event, BlockRemoved):
                        removed += len(event.block_hashes)
                    elif isinstance(event, BlockStored):
                        stored += len(event.block_hashes)
                        assert event.block_size == BLOCK
                        # Image blocks carry the image's hash in their extra keys.
                        assert event.extra_keys and event.extra_keys[0]
    finally:
        sub.close(linger=0)
    assert stored > USABLE_BLOCKS and removed > 0, (stored, removed)

    wait_for(lambda: (gateway.kv_state()[home]["last_seq"] or -1) >= last_seq,
             what="the gateway applied the eviction batches")
    state = gateway.kv_state()[home]
    assert state["blocks_tracked"] <= USABLE_BLOCKS, state
    after = gateway.ask("precise", image_messages(url, question("evicted", 1)))
    assert after.route["candidates"][home]["matched_tokens"] == 0, after.route
    assert after.cached_tokens == 0, "the engine evicted it too"
