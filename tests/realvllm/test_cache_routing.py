"""prefix_kv_aware vs round_robin in front of two real vLLM replicas: who hits the KV cache.

Hits are the engine's own account (``usage.prompt_tokens_details.cached_tokens``), not the
gateway's guess. Every test uses prompts no other test sends, so earlier tests' caches do not
help it; the gateway's exact cache is off, so repeats reach the engines.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.realvllm.client import (
    RealGateway,
    document,
    image,
    image_messages,
    question,
    text_messages,
    wait_for,
)

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]

DOC_TOKENS = 1500
BLOCK = 32
IMAGE_TOKENS = 576


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_shared_text_prefix_hits_with_prefix_kv_aware(gateway: RealGateway, stream: bool,
                                                      ) -> None:
    doc = document(f"kv-{stream}", DOC_TOKENS)
    answers = [gateway.ask("kv", text_messages(doc, question("kv", i)), stream=stream)
               for i in range(4)]
    first, repeats = answers[0], answers[1:]
    assert first.cached_tokens == 0, "a fresh document cannot be cached yet"
    assert {a.deployment for a in answers} == {first.deployment}
    for answer in repeats:
        # Every full block of the shared system prompt, i.e. all but its unfinished tail.
        assert answer.cached_tokens >= DOC_TOKENS - BLOCK, answer.usage
        assert answer.cached_tokens < answer.prompt_tokens
        if not stream:
            assert answer.route["outcome"] == "hit"
    if stream:
        assert all(a.ttft_s is not None and a.usage["completion_tokens"] == 4 for a in answers)
    else:
        assert first.route["outcome"] == "cold"


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_shared_text_prefix_recomputes_with_round_robin(gateway: RealGateway, stream: bool,
                                                        ) -> None:
    doc = document(f"rr-{stream}", DOC_TOKENS)
    answers = [gateway.ask("rr", text_messages(doc, question("rr", i)), stream=stream)
               for i in range(4)]
    deployments = [a.deployment for a in answers]
    assert len(set(deployments)) == 2 and deployments[0] != deployments[1]
    # The second request lands on the replica that has never seen the document: recomputed.
    assert answers[0].cached_tokens == 0 and answers[1].cached_tokens == 0
    # Only the later visits to each replica hit.
    assert answers[2].cached_tokens >= DOC_TOKENS - BLOCK
    recomputed = sum(a.prompt_tokens - a.cached_tokens for a in answers)
    assert recomputed >= 2 * DOC_TOKENS


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_same_image_hits_with_prefix_kv_aware(gateway: RealGateway, stream: bool) -> None:
    url = image(f"kv-{stream}")
    answers = [gateway.ask("kv", image_messages(url, question("kv-image", i)), stream=stream)
               for i in range(3)]
    assert {a.deployment for a in answers} == {answers[0].deployment}
    assert answers[0].cached_tokens == 0
    for answer in answers:
        assert answer.usage["prompt_tokens_details"]["multimodal_tokens"] == {
            "image": IMAGE_TOKENS}
        # The image is most of the prompt: its 576 vision tokens are what a hit saves.
        assert answer.prompt_tokens < IMAGE_TOKENS + 64
    for answer in answers[1:]:
        assert answer.cached_tokens >= IMAGE_TOKENS, answer.usage


def test_same_image_recomputes_with_round_robin(gateway: RealGateway) -> None:
    url = image("rr")
    answers = [gateway.ask("rr", image_messages(url, question("rr-image", i)))
               for i in range(2)]
    assert answers[0].deployment != answers[1].deployment
    assert answers[0].cached_tokens == 0 and answers[1].cached_tokens == 0


def test_different_images_spread_over_both_replicas(gateway: RealGateway) -> None:
    """Cold images arriving together do not pile on one replica: each one's queued prefill
    makes the other replica the sooner one for the next.

    (Sent one after another onto an idle fleet, each goes where the learned figures predict
    the first token soonest, which on two identical replicas is the one that happened to
    measure faster: the predicted-TTFT scorer does not rotate for its own sake.)
    """
    # An earlier test's abandoned stream may still be decoding on one replica, and the
    # gateway's load includes the engines' own queues: start from idle engines, and give the
    # gateway's scrape (every second) time to see it.
    wait_for(gateway.engines_idle, what="both replicas idle")
    time.sleep(1.5)
    with ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda i: gateway.ask(
            "kv", image_messages(image(f"spread-{i}"), "what is it?")), range(4))
        deployments = {answer.deployment for answer in answers}
    assert len(deployments) == 2
