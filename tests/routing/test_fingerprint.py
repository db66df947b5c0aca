"""Fingerprint properties: prefix-stable, image-sensitive, order-sensitive, bounded cost."""

from __future__ import annotations

import base64
import time

import orjson
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.core.call import Call
from kvgate.request.parse import parse_call
from kvgate.routing.fingerprint import MessageMemo, declared_image_tokens, fingerprint
from tests.routing.factories import deployment
from tests.support.images import png

BLOCK_CHARS = 64


def call_for(messages: list[dict[str, object]], **extra: object) -> Call:
    body = orjson.dumps({"model": "m", "messages": messages, **extra})
    return parse_call(body, "chat", models={"m"}, max_image_bytes=1 << 24)


def image_part(data: bytes) -> dict[str, object]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


texts = st.text(min_size=0, max_size=600)


@given(system=texts, first=texts, second=texts)
@settings(max_examples=60, deadline=None)
def test_extending_a_conversation_keeps_its_prefix(system: str, first: str, second: str) -> None:
    base = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    longer = [*base, {"role": "assistant", "content": "ok"}, {"role": "user", "content": second}]
    short = fingerprint(call_for(base), block_chars=BLOCK_CHARS)
    long = fingerprint(call_for(longer), block_chars=BLOCK_CHARS)
    assert long.hashes[: len(short.hashes)] == short.hashes
    assert len(long.hashes) >= len(short.hashes)


@given(question_a=texts, question_b=texts, image=st.binary(min_size=1, max_size=256))
@settings(max_examples=60, deadline=None)
def test_same_image_converges_other_image_diverges(question_a: str, question_b: str,
                                                   image: bytes) -> None:
    intro = {"role": "system", "content": "You describe images. " * 8}

    def fp(img: bytes, question: str) -> tuple[int, ...]:
        user = {"role": "user", "content": [image_part(img), {"type": "text", "text": question}]}
        return fingerprint(call_for([intro, user]), block_chars=BLOCK_CHARS).hashes

    a, b = fp(image, question_a), fp(image, question_b)
    other = fp(image + b"\x01", question_a)
    intro_links = fingerprint(call_for([intro]), block_chars=BLOCK_CHARS)
    # The same image after the same text gives the same link, whatever is asked after it.
    shared = common_prefix(a, b)
    assert shared >= len(intro_links.hashes) + 1
    # Another image diverges at the image link: after the shared text, before the question.
    diverged_at = common_prefix(a, other)
    assert len(intro_links.hashes) <= diverged_at < shared


def test_image_link_carries_its_vision_tokens() -> None:
    call = call_for([{"role": "user", "content": [image_part(b"x" * 100)]}])
    call.image_tokens[0] = 2929
    fp = fingerprint(call, block_chars=BLOCK_CHARS)
    assert 2929 in fp.tokens


@given(a=st.text(min_size=70, max_size=300), b=st.text(min_size=70, max_size=300))
@settings(max_examples=60, deadline=None)
def test_message_order_matters(a: str, b: str) -> None:
    if a == b:
        return
    one = fingerprint(call_for([{"role": "user", "content": a}, {"role": "user", "content": b}]),
                      block_chars=BLOCK_CHARS)
    two = fingerprint(call_for([{"role": "user", "content": b}, {"role": "user", "content": a}]),
                      block_chars=BLOCK_CHARS)
    assert one.hashes != two.hashes


def test_roles_and_tools_change_the_chain() -> None:
    text = "x" * 500
    user = fingerprint(call_for([{"role": "user", "content": text}]), block_chars=BLOCK_CHARS)
    system = fingerprint(call_for([{"role": "system", "content": text}]), block_chars=BLOCK_CHARS)
    tools = fingerprint(call_for([{"role": "user", "content": text}],
                                 tools=[{"type": "function", "function": {"name": "f"}}]),
                        block_chars=BLOCK_CHARS)
    assert user.hashes[0] != system.hashes[0]
    assert user.hashes[0] != tools.hashes[0]


def test_only_full_blocks_are_hashed() -> None:
    fp = fingerprint(call_for([{"role": "user", "content": "y" * 1000}]), block_chars=100)
    # Role marker (10 bytes) + 1000 chars = 1010 bytes: 10 full blocks, the tail is dropped.
    assert len(fp.hashes) == 10
    assert fp.total_tokens == 10 * 25


def test_same_prompt_same_chain_in_every_process() -> None:
    # Pinned: the chain (hashes and token counts) of a prompt with every kind of piece (tools,
    # roles, text parts around an image, tool calls, non-ASCII text) must not change between
    # processes or releases: gateways sharing a Redis index must agree on it.
    image = "data:image/png;base64," + base64.b64encode(b"\x01" * 300).decode()
    tool_call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "You are terse. " * 40},
        {"role": "user", "content": [{"type": "text", "text": "Look: " * 30},
                                     {"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What is it? " * 50}]},
        {"role": "assistant", "content": "A square. " * 10, "tool_calls": [tool_call]},
        {"role": "user", "content": "Thanks! \u00e9 " * 60}]
    fp = fingerprint(call_for(messages, tools=[{"type": "function", "function": {"name": "f"}}]),
                     block_chars=BLOCK_CHARS)
    assert len(fp.hashes) == 37 and fp.total_tokens == 2063
    assert fp.hashes[:2] == (6683617462009365119, 7483696986360424966)
    assert xxhash.xxh3_64_intdigest(repr((fp.hashes, fp.tokens)).encode()) == (
        3323313309725026501)
    assert fp.total_tokens == sum(fp.tokens) and fp.tokens_in_first(3) == 48


@given(system=texts, first=texts, second=texts, image=st.binary(min_size=1, max_size=64))
@settings(max_examples=60, deadline=None)
def test_a_memo_changes_nothing_but_the_work(system: str, first: str, second: str,
                                             image: bytes) -> None:
    memo = MessageMemo(max_links=40, min_bytes=16)  # small: entries come and go
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": first}],
        [{"role": "system", "content": system}, {"role": "user", "content": second}],
        [{"role": "user", "content": [{"type": "text", "text": first}, image_part(image),
                                      {"type": "text", "text": system}]}],
        [{"role": "system", "content": system}, {"role": "user", "content": first}],
    ]
    for messages in conversations * 2:
        with_memo = fingerprint(call_for(messages), block_chars=BLOCK_CHARS, memo=memo)
        assert with_memo == fingerprint(call_for(messages), block_chars=BLOCK_CHARS)


def test_the_memo_keeps_its_bound_dropping_the_oldest_messages_first() -> None:
    memo = MessageMemo(max_links=10, min_bytes=1)
    for n in range(6):
        memo.put((n, b"", n), (n,) * 3, b"")  # 3 links each: 3 entries fit
    assert [memo.get((n, b"", n)) is not None for n in range(6)] == [False] * 3 + [True] * 3
    memo.put((3, b"", 3), (9,) * 3, b"")  # already there: kept as it was, not re-queued
    assert memo.get((3, b"", 3)) == ((3,) * 3, b"")
    memo.put((6, b"", 6), (6,) * 4, b"")  # 13 links: the oldest goes (10 left)
    assert [memo.get((n, b"", n)) is not None for n in range(3, 7)] == [False, True, True, True]
    memo.put((8, b"", 8), (8,) * 5, b"")  # 15: the next two oldest go (9 left)
    assert [memo.get((n, b"", n)) is not None for n in (4, 5, 6, 8)] == [False, False, True,
                                                                       True]
    memo.put((7, b"", 7), (7,) * 11, b"")  # longer than the bound: never kept
    assert memo.get((7, b"", 7)) is None and memo.get((6, b"", 6)) is not None


def test_messages_shorter_than_a_block_still_leave_the_bounded_memo() -> None:
    # With blocks longer than the memo's threshold, a message between the two has no whole
    # link: its entry still counts, so distinct ones do not pile up past the bound.
    memo = MessageMemo(max_links=10, min_bytes=16)
    for n in range(50):
        fingerprint(call_for([{"role": "user", "content": f"{n:04d}" + "x" * 40}]),
                    block_chars=1024, memo=memo)
    assert len(memo._entries) == 10


def test_cost_is_bounded_for_a_100k_token_prompt() -> None:
    # Not a timing assertion: the work is linear in the prompt, checked by link count.
    prompt = "lorem ipsum dolor sit amet " * 15_000  # ~400k chars, ~100k tokens
    call = call_for([{"role": "user", "content": prompt}])
    started = time.perf_counter()
    fp = fingerprint(call, block_chars=256)
    elapsed_s = time.perf_counter() - started
    assert len(fp.hashes) == (len(prompt) + 10) // 256
    assert fp.total_tokens >= 99_000
    print(f"100k-token fingerprint: {elapsed_s * 1000:.2f} ms, {len(fp.hashes)} links")


def test_image_weight_follows_its_size() -> None:
    # LLaVA-OneVision's placeholder counts (VLLM_FACTS): 384^2 -> 1485, 640x480 -> 2929.
    call = call_for([{"role": "user", "content": [image_part(png(640, 480)),
                                                  image_part(png(384, 384))]}])
    assert call.image_tokens == [2929, 1485]
    http = call_for([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}])
    assert http.image_tokens == [1500]


def test_images_weigh_what_the_models_replicas_declare() -> None:
    call = call_for([{"role": "user", "content": [image_part(png(512, 512)),
                                                  {"type": "text", "text": "what is it?"}]}])
    assert call.image_tokens == [3699]  # LLaVA-OneVision's rule, from the header
    same = [deployment(name, image_tokens=576) for name in ("a", "b")]
    assert declared_image_tokens(same) == 576
    declared = fingerprint(call, block_chars=BLOCK_CHARS, image_tokens=576)
    estimated = fingerprint(call, block_chars=BLOCK_CHARS)
    assert 576 in declared.tokens and 3699 not in declared.tokens
    assert estimated.total_tokens - declared.total_tokens == 3699 - 576
    assert declared.hashes == estimated.hashes  # the weight, not the identity, changes
    # Replicas that disagree, or one that declares nothing: no single count to use.
    assert declared_image_tokens([*same, deployment("c", image_tokens=729)]) is None
    assert declared_image_tokens([*same, deployment("c")]) is None
