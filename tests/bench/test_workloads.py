"""Workloads: same seed, same bytes; and each has the shape it is named after."""

from __future__ import annotations

import base64
import io
import itertools

import orjson
import pytest
from PIL import Image

from kvgate.bench.request import NO_SESSION
from kvgate.bench.text import approx_tokens
from kvgate.bench.workloads import (
    WORKLOADS,
    MultimodalWorkload,
    MultiRoundChatWorkload,
    SharedPrefixWorkload,
    WorkloadOptions,
    build_requests,
    make_workload,
)

SMALL = {
    "chat": {"num_users": "3", "num_rounds": "3", "system_prompt_tokens": "50",
             "user_history_tokens": "20", "question_tokens": "5", "answer_tokens": "7"},
    "shared_prefix": {"num_groups": "3", "prompts_per_group": "4", "system_prompt_tokens": "40",
                      "question_tokens": "6", "output_tokens": "5"},
    "multimodal": {"num_images": "3", "questions_per_image": "3", "resolutions": "32x32,64x48"},
    "trace": {},
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_same_seed_same_requests(name: str) -> None:
    first = build_requests(name, WorkloadOptions(seed=5, num_requests=9), SMALL[name])
    again = build_requests(name, WorkloadOptions(seed=5, num_requests=9), SMALL[name])
    other = build_requests(name, WorkloadOptions(seed=6, num_requests=9), SMALL[name])
    assert len(first) == 9
    assert first == again
    assert [r.body for r in first] != [r.body for r in other]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
@pytest.mark.parametrize("stream", [True, False])
def test_bodies_are_openai_requests(name: str, stream: bool) -> None:
    options = WorkloadOptions(model="m1", num_requests=4, stream=stream, ignore_eos=True)
    for request in build_requests(name, options, SMALL[name]):
        body = orjson.loads(request.body)
        assert body["model"] == "m1"
        assert body["stream"] is stream and request.stream is stream
        assert ("stream_options" in body) is stream
        assert body["ignore_eos"] is True
        assert body["max_tokens"] == request.max_output_tokens >= 1
        assert body.get("messages") or body.get("prompt")


def test_shared_prefix_groups_share_exactly_their_system_prompt() -> None:
    workload = SharedPrefixWorkload(num_groups=3, prompts_per_group=4, system_prompt_tokens=40,
                                    question_tokens=6)
    requests = workload.build(WorkloadOptions())
    assert len(requests) == 12
    systems: dict[str, set[str]] = {}
    questions = set()
    for request in requests:
        system, user = orjson.loads(request.body)["messages"]
        systems.setdefault(request.tag, set()).add(system["content"])
        questions.add(user["content"])
        assert approx_tokens(system["content"]) == 40
    assert all(len(texts) == 1 for texts in systems.values())
    assert len({next(iter(t)) for t in systems.values()}) == 3
    assert len(questions) == 12
    assert [r.tag for r in requests] != sorted(r.tag for r in requests)  # shuffled


def test_shared_prefix_request_count_stretches_groups() -> None:
    requests = SharedPrefixWorkload(num_groups=2, prompts_per_group=1).build(
        WorkloadOptions(num_requests=5))
    assert len(requests) == 5
    assert {r.tag for r in requests} == {"group0", "group1"}


def test_chat_history_grows_per_user_over_a_shared_system_prompt() -> None:
    workload = MultiRoundChatWorkload(num_users=3, num_rounds=3, system_prompt_tokens=50,
                                      user_history_tokens=20, question_tokens=5,
                                      answer_tokens=7)
    requests = workload.build(WorkloadOptions())
    assert [r.session for r in requests[:4]] == [0, 1, 2, 0]  # round by round
    conversations: dict[int, list[list[dict[str, str]]]] = {}
    for request in requests:
        conversations.setdefault(request.session, []).append(
            orjson.loads(request.body)["messages"])
    systems = {turns[0][0]["content"] for turns in conversations.values()}
    assert len(systems) == 1
    for turns in conversations.values():
        for earlier, later in itertools.pairwise(turns):
            assert later[: len(earlier)] == earlier  # the whole previous prompt is a prefix
            assert later[len(earlier)]["role"] == "assistant"
            assert approx_tokens(later[len(earlier)]["content"]) == 7
        assert approx_tokens(turns[0][1]["content"]) == 20 + 5
    hints = [r.prompt_tokens_hint for r in requests if r.session == 0]
    assert hints == [75, 87, 99]
    assert all(r.session != NO_SESSION for r in requests)


def test_multimodal_repeats_each_image_with_different_questions() -> None:
    workload = MultimodalWorkload(num_images=3, questions_per_image=4, resolutions="32x32,64x48")
    requests = workload.build(WorkloadOptions(seed=2))
    assert len(requests) == 12
    urls: dict[str, set[str]] = {}
    questions = set()
    for request in requests:
        image, text = orjson.loads(request.body)["messages"][0]["content"]
        urls.setdefault(request.tag, set()).add(image["image_url"]["url"])
        questions.add(text["text"])
    assert all(len(u) == 1 for u in urls.values())
    assert len(questions) == 12
    sizes = []
    for tag in sorted(urls):
        png = base64.b64decode(next(iter(urls[tag])).split(",", 1)[1])
        with Image.open(io.BytesIO(png)) as image:
            sizes.append(image.size)
    assert sizes == [(32, 32), (64, 48), (32, 32)]


def test_multimodal_image_last_puts_text_first() -> None:
    request = MultimodalWorkload(num_images=1, questions_per_image=1, resolutions="8x8",
                                 image_first=False).build(WorkloadOptions())[0]
    parts = orjson.loads(request.body)["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]


def test_overrides_are_typed_and_checked() -> None:
    workload = make_workload("multimodal", {"num_images": "2", "image_first": "no"})
    assert workload == MultimodalWorkload(num_images=2, image_first=False)
    with pytest.raises(ValueError, match="unknown parameter"):
        make_workload("chat", {"bogus": "1"})
    with pytest.raises(ValueError, match="num_users"):
        make_workload("chat", {"num_users": "many"})
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope")
    with pytest.raises(ValueError, match="resolution"):
        make_workload("multimodal", {"resolutions": "big"})
