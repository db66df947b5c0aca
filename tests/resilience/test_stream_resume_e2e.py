"""Streams cut mid-answer continue on another deployment; the client reads one answer.

The deterministic mock gives the same answer to the same conversation on every deployment
with the same upstream model, and continues a partial assistant message exactly where it
stopped (vLLM's ``continue_final_message``), so a spliced stream must equal the reference
answer byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.resilience.e2e import Event, GatewayClient, chat_body, streamed_text
from tests.support.processes import RunningUpstream, run_gateway, run_upstream

ANSWER_TOKENS = 24
#: Cut points drawn once from a fixed seed: after the role chunk (0), and three mid-answer.
CUT_AFTER = [0, *sorted(random.Random(2024).sample(range(1, ANSWER_TOKENS), 3))]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RunningUpstream]]:
    with run_upstream() as cut, run_upstream() as ok, run_upstream() as hosted:
        cut.control(cut_after=3)
        yield {"cut": cut, "ok": ok, "hosted": hosted}


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, RunningUpstream]) -> Iterator[GatewayClient]:
    mock = f"type: mock, default_output_tokens: {ANSWER_TOKENS}"
    cut_providers = "\n".join(f"  cut{k}: {{ {mock}, fail_after_chunks: {k} }}" for k in CUT_AFTER)
    # `cost` puts the free, cutting deployment first; the priced one is where it resumes.
    resume_models = "\n".join(f"""
  - name: resume{k}
    deployments:
      - {{ provider: cut{k}, model: m, id: cut{k} }}
      - {{ provider: ok, model: m, id: ok, cost_per_1k_output: 1.0 }}""" for k in CUT_AFTER)
    config = f"""
providers:
  ok: {{ {mock} }}
{cut_providers}
  three: {{ {mock}, fail_after_chunks: 3 }}
  seven: {{ {mock}, fail_after_chunks: 7 }}
  up_cut: {{ type: openai_compatible, api_base: "{upstreams['cut'].api_base}" }}
  up_ok: {{ type: openai_compatible, api_base: "{upstreams['ok'].api_base}" }}
  hosted: {{ type: openai_compatible, api_base: "{upstreams['hosted'].api_base}",
            resume_streams: false }}
routing: {{ strategy: cost, breaker: {{ enabled: false }} }}
cache: {{ exact: {{ enabled: false }} }}
models:
  - name: reference
    deployments: [ {{ provider: ok, model: m }} ]
{resume_models}
  - name: chain            # cut after 3, the continuation cut after 7 more, then finished
    deployments:
      - {{ provider: three, model: m, id: three }}
      - {{ provider: seven, model: m, id: seven, cost_per_1k_output: 0.5 }}
      - {{ provider: ok, model: m, id: ok, cost_per_1k_output: 1.0 }}
  - name: stranded         # the only other deployment cannot continue a message
    deployments:
      - {{ provider: three, model: m, id: three }}
      - {{ provider: hosted, model: m, id: hosted, cost_per_1k_output: 1.0 }}
  - name: upstreams        # real connections cut by the test upstream
    deployments:
      - {{ provider: up_cut, model: m, id: up_cut }}
      - {{ provider: up_ok, model: m, id: up_ok, cost_per_1k_output: 1.0 }}
"""
    with run_gateway(config) as running:
        client = GatewayClient(running)
        yield client
        client.close()


def reference(gateway: GatewayClient, content: str, **extra: Any) -> str:
    reply = gateway.post(chat_body("reference", content, **extra))
    assert reply.status_code == 200
    text: str = reply.json()["choices"][0]["message"]["content"]
    return text


def assert_one_clean_answer(events: list[Event]) -> None:
    chunks = [e for e in events if isinstance(e, dict)]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert len({c["id"] for c in chunks}) == 1 and len({c["model"] for c in chunks}) == 1
    roles = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1 and chunks.index(roles[0]) == 0
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1


@pytest.mark.parametrize("cut_after", CUT_AFTER)
def test_a_stream_cut_at_a_random_chunk_reads_as_the_full_answer(
    gateway: GatewayClient, cut_after: int
) -> None:
    content = f"tell me about routing #{cut_after}"
    expected = reference(gateway, content)
    assert len(expected.split()) == ANSWER_TOKENS
    events = gateway.stream(chat_body(f"resume{cut_after}", content,
                                      stream_options={"include_usage": True}))
    assert streamed_text(events) == expected
    assert_one_clean_answer(events)
    usage = [e for e in events if isinstance(e, dict) and e.get("usage")][-1]["usage"]
    assert usage["completion_tokens"] == ANSWER_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    rows = gateway.deployments(f"resume{cut_after}")
    assert rows[f"cut{cut_after}"]["failures_total"] >= 1
    gateway.assert_idle()


def test_max_tokens_counts_the_whole_answer_across_the_splice(gateway: GatewayClient) -> None:
    expected = reference(gateway, "short one", max_tokens=10)
    events = gateway.stream(chat_body(f"resume{CUT_AFTER[1]}", "short one", max_tokens=10))
    assert streamed_text(events) == expected
    assert_one_clean_answer(events)
    finish = [e["choices"][0]["finish_reason"] for e in events
              if isinstance(e, dict) and e["choices"] and e["choices"][0]["finish_reason"]]
    assert finish == ["length"]


def test_a_continuation_cut_again_continues_once_more(gateway: GatewayClient) -> None:
    before = gateway.metric('kvgate_stream_resumes_total{model="chain",outcome="resumed"}')
    expected = reference(gateway, "twice cut")
    events = gateway.stream(chat_body("chain", "twice cut"))
    assert streamed_text(events) == expected
    assert_one_clean_answer(events)
    after = gateway.metric('kvgate_stream_resumes_total{model="chain",outcome="resumed"}')
    assert after - before == 2
    gateway.assert_idle()


def test_no_deployment_able_to_continue_ends_with_an_error_never_done(
    gateway: GatewayClient, upstreams: dict[str, RunningUpstream]
) -> None:
    hosted_before = len(upstreams["hosted"].log()["received"])  # type: ignore[arg-type]
    expected = reference(gateway, "stranded")
    events = gateway.stream(chat_body("stranded", "stranded"))
    assert "[DONE]" not in events
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["type"] == "upstream_server_error"
    # What did arrive is the true beginning of the answer: three tokens, then the error.
    partial = streamed_text(events[:-1])
    assert expected.startswith(partial) and len(partial.split()) == 3
    # The hosted deployment was never asked to do what it cannot.
    assert len(upstreams["hosted"].log()["received"]) == hosted_before  # type: ignore[arg-type]
    gateway.assert_idle()


def test_a_real_connection_cut_resumes_on_another_upstream(
    gateway: GatewayClient, upstreams: dict[str, RunningUpstream]
) -> None:
    upstreams["ok"].control(stream_id="up-ok")  # the continuation's chunks carry another id
    try:
        events = gateway.stream(chat_body("upstreams", "over the wire",
                                          stream_options={"include_usage": True}))
    finally:
        upstreams["ok"].control()
    assert streamed_text(events) == "alpha beta gamma delta epsilon zeta eta theta"
    assert events[-1] == "[DONE]"
    # The usage tells the whole answer (the first attempt's three words moved from the
    # continuation's prompt to its completion): the relay's change reached the client's chunk.
    (usage,) = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        7 - 3, 8, 12)
    # One answer: the continuation's chunks wear the first attempt's id (relayed as parsed
    # and encoded again, not as the upstream's bytes).
    assert {event["id"] for event in events if isinstance(event, dict)} == {"up-s"}
    continued = upstreams["ok"].log()["received"][-1]  # type: ignore[index]
    assert continued["continue_final_message"] is True
    assert continued["add_generation_prompt"] is False
    assert continued["messages"] == [
        {"role": "user", "content": "over the wire"},
        {"role": "assistant", "content": "alpha beta gamma"},
    ]
    gateway.assert_idle()


def test_legacy_completions_resume_by_extending_the_prompt(
    gateway: GatewayClient, upstreams: dict[str, RunningUpstream]
) -> None:
    events = gateway.stream({"model": "upstreams", "prompt": "Once upon a time", "max_tokens": 6},
                            path="/v1/completions")
    assert events[-1] == "[DONE]"
    continued = upstreams["ok"].log()["received"][-1]  # type: ignore[index]
    assert continued["prompt"] == "Once upon a time" + "alpha beta gamma"
    assert continued["max_tokens"] == 3
    # The test upstream ignores prompts, so the spliced text is its three new words.
    assert streamed_text(events) == "alpha beta gamma" + "alpha beta gamma"
    gateway.assert_idle()
