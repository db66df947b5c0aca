"""The fingerprint's whole builder in C (``_chain_native.build``) against the Python builder
(``py_fingerprint`` with the Python block loop): random chat and completion bodies of every
shape, the ones the C builder takes and the ones it leaves to Python, give the same
fingerprints and leave the memo in the same state; bad input is refused, not crashed on."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvgate.routing import _chain_native, fingerprint
from kvgate.routing.fingerprint import Fingerprint, MessageMemo, py_chain, py_fingerprint
from tests.routing.factories import call

_ALPHABET = "abcdefgh ij\n\u00e9\u4e2d\U0001f600"  # 1-, 2-, 3- and 4-byte UTF-8
_ROLES = ["system", "user", "assistant", "tool", "developer", "function", "critic", None]


def _text(rng: random.Random, shared: str) -> str:
    kind = rng.random()
    if kind < 0.3:  # a piece of a long text other requests share: memo hits
        start = rng.choice([0, 0, 100, 2000])
        return shared[start:start + rng.choice([600, 3000, 9000])]
    if kind < 0.6:
        return "".join(rng.choice("abc xyz") for _ in range(rng.randint(0, 700)))
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 400)))


def _content(rng: random.Random, shared: str, images: list[tuple[bytes, int]]) -> Any:
    kind = rng.random()
    if kind < 0.5:
        return _text(rng, shared)
    if kind < 0.9:
        parts: list[dict[str, Any]] = []
        for _ in range(rng.randint(0, 4)):
            if rng.random() < 0.35:
                digest = rng.choice([b"\x01" * 32, b"\x02" * 32, rng.randbytes(32)])
                images.append((digest, rng.choice([1, 729, 4725])))
                parts.append({"type": "image_url", "image_url": {"url": "x"}})
            else:
                parts.append({"type": "text", "text": _text(rng, shared)})
        return parts
    return None if kind < 0.95 else ""


def _rare(rng: random.Random, message: dict[str, Any]) -> None:
    """A shape the C builder leaves to Python, now and then."""
    kind = rng.random()
    if kind < 0.03:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    elif kind < 0.05 and isinstance(message.get("content"), list):
        message["content"].append({"type": "input_audio", "input_audio": {"data": "AAAA"}})
    elif kind < 0.06:
        message["tool_calls"] = []  # empty: no effect on the prompt, C keeps it


def _body(rng: random.Random, shared: str) -> tuple[dict[str, Any], list[tuple[bytes, int]]]:
    images: list[tuple[bytes, int]] = []
    if rng.random() < 0.1:
        prompt: Any = _text(rng, shared) if rng.random() < 0.8 else [1, 2, 3]
        return {"model": "m", "prompt": prompt}, images
    messages = []
    for _ in range(rng.randint(0, 6)):
        message: dict[str, Any] = {"content": _content(rng, shared, images)}
        role = rng.choice(_ROLES)
        if role is not None or rng.random() < 0.5:
            message["role"] = role
        _rare(rng, message)
        messages.append(message)
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if rng.random() < 0.05:
        body["tools"] = [{"type": "function", "function": {"name": "f"}}]
    elif rng.random() < 0.05:
        body["tools"] = None  # present but None: no effect, C keeps it
    return body, images


def _call(body: dict[str, Any], images: list[tuple[bytes, int]]) -> Any:
    request = call()
    request.body = body
    request.image_digests = [digest for digest, _ in images]
    request.image_tokens = [tokens for _, tokens in images]
    return request


def _memo_state(memo: MessageMemo | None) -> Any:
    if memo is None:
        return None
    return dict(memo._entries), list(memo._order), memo._links


@pytest.mark.parametrize("seed", range(6))
def test_same_fingerprints_and_memo_as_the_python_builder(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    shared = "".join(rng.choice(_ALPHABET + "klmnop") for _ in range(12_000))
    block_chars = rng.choice([1, 7, 64, 256, 1000, 5000])  # 5000: the tail buffer grows
    use_memo = seed % 3 != 2
    memo_c = MessageMemo(max_links=rng.choice([50, 65_536]), min_bytes=rng.choice([0, 300, 2048]))
    memo_py = MessageMemo(max_links=memo_c.max_links, min_bytes=memo_c.min_bytes)
    built = python_only = 0
    for _ in range(300):
        body, images = _body(rng, shared)
        request = _call(body, images)
        override = rng.choice([None, None, 0, 196])
        start = rng.choice([0, 1, 2**64 - 1])
        native = _chain_native.build(request.body, request.image_digests, request.image_tokens,
                                     override or 0, block_chars, start,
                                     memo_c if use_memo else None)
        if native is None:
            python_only += 1
            got = fingerprint.fingerprint(request, block_chars=block_chars, seed=start,
                                          memo=memo_c if use_memo else None,
                                          image_tokens=override)
        else:
            built += 1
            got = Fingerprint(*native)
        with monkeypatch.context() as patched:
            patched.setattr(fingerprint, "_chain", py_chain)
            expected = py_fingerprint(request, block_chars=block_chars, seed=start,
                                      memo=memo_py if use_memo else None, image_tokens=override)
        assert got == expected
        assert got.total_tokens == sum(got.tokens)
        assert _memo_state(memo_c if use_memo else None) == _memo_state(
            memo_py if use_memo else None)
    # Both paths ran: the common shapes in C, the rare ones (tools, tool calls, audio
    # parts, token-id prompts) in Python.
    assert built > 200
    assert python_only > 5


def test_the_common_shapes_are_built_in_c_the_rest_left_to_python() -> None:
    def native(body: dict[str, Any], images: int = 0) -> object:
        return _chain_native.build(body, [b"d" * 32] * images, [10] * images, 0, 4, 0, None)

    text = {"role": "user", "content": "hello world"}
    assert native({"messages": [text]}) is not None
    assert native({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]}]}, 1) is not None
    assert native({"prompt": "hello"}) is not None
    assert native({"messages": [text], "tool_choice": None}) is not None
    assert native({"messages": [text], "tools": []}) is None  # dumped as JSON in Python
    assert native({"messages": [{**text, "tool_calls": [{"id": "x"}]}]}) is None
    assert native({"messages": [{"role": "user", "content": [{"type": "x"}]}]}) is None
    assert native({"prompt": [1, 2]}) is None
    assert native({"messages": "not a list"}) is None
    assert native({"messages": [["not", "a", "dict"]]}) is None
    assert native({"messages": [{"role": 5, "content": "x"}]}) is None
    # An image part beyond the call's digests: Python's builder raises for it.
    assert native({"messages": [{"content": [{"type": "image_url"}]}]}) is None


def test_a_huge_block_size_costs_what_the_prompt_fills() -> None:
    """block_chars has no upper bound in the config: the C builder's tail buffer grows with
    the text instead of taking a block's worth up front (a gigabyte here)."""
    text = "abc " * 3000
    for block_chars in (10**9, 5000, 2**40):
        memo_c, memo_py = MessageMemo(min_bytes=0), MessageMemo(min_bytes=0)  # one per size
        request = call()
        request.body = {"messages": [{"role": "system", "content": text},
                                     {"role": "user", "content": [
                                         {"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {}}]}]}
        request.image_digests, request.image_tokens = [b"d" * 32], [100]
        got = fingerprint.fingerprint(request, block_chars=block_chars, memo=memo_c)
        assert got == py_fingerprint(request, block_chars=block_chars, memo=memo_py)
        assert _memo_state(memo_c) == _memo_state(memo_py)
        assert len(got.hashes) >= 1  # the image's link at least


def test_hashes_the_strings_utf8_without_changing_them() -> None:
    text = "\u4e2d\u00e9" * 300
    request = call()
    request.body = {"messages": [{"role": "user", "content": text}]}
    fp = fingerprint.fingerprint(request, block_chars=16)
    assert fp == py_fingerprint(request, block_chars=16)
    assert request.body["messages"][0]["content"] == text


def test_bad_input_is_refused() -> None:
    good: list[Any] = [{"messages": []}, [], [], 0, 4, 0, None]

    def build(at: int, value: Any) -> Any:
        args = list(good)
        args[at] = value
        return _chain_native.build(*args)

    assert build(0, {"messages": []}) == ((), (), 0)
    for at, value in [(0, []), (1, ()), (2, None)]:
        with pytest.raises(TypeError):
            build(at, value)
    with pytest.raises(ValueError):
        build(4, 0)  # block_chars
    with pytest.raises(OverflowError):
        build(5, -1)  # seed
    with pytest.raises(TypeError):
        _chain_native.build({"messages": []})  # type: ignore[call-arg]
    with pytest.raises(AttributeError):  # a memo without min_bytes
        build(6, object())
    # A memo whose entry is not (links, tail) is refused when read.
    memo = MessageMemo(min_bytes=0)
    body = {"messages": [{"role": "user", "content": "abcdefgh"}]}
    assert _chain_native.build(body, [], [], 0, 4, 0, memo) is not None
    for key in list(memo._entries):
        memo._entries[key] = ("bad", b"")  # type: ignore[assignment]
    with pytest.raises(TypeError):
        _chain_native.build(body, [], [], 0, 4, 0, memo)
    # Image weights that are not ints are refused.
    image_body = {"messages": [{"content": [{"type": "image_url"}]}]}
    with pytest.raises(TypeError):
        _chain_native.build(image_body, [b"d"], ["x"], 0, 4, 0, None)


def test_configure_refuses_bad_constants() -> None:
    with pytest.raises(TypeError):
        _chain_native.configure((), {"user": "not bytes"}, b"?", 4)  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        _chain_native.configure((), {}, b"?", 0)


class _MeddlingMemo(MessageMemo):
    """A memo whose lookups change the body being fingerprinted (and the markers): what the
    C builder reads across the call must stay alive (the sanitized run checks it)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(min_bytes=0)
        self.body = body

    def get(self, key: tuple[int, bytes, int]) -> Any:
        messages = self.body.get("messages")
        if isinstance(messages, list) and messages:
            message = messages.pop()
            if isinstance(message.get("content"), list):
                message["content"].clear()
            message["content"] = None
        self.body.pop("prompt", None)
        fingerprint._chain_native.configure(
            fingerprint._PROMPT_FIELDS, dict(fingerprint._ROLE_MARKERS),
            fingerprint._UNKNOWN_ROLE, fingerprint.CHARS_PER_TOKEN)
        return super().get(key)


@pytest.mark.parametrize("shape", ["strings", "parts", "prompt"])
def test_a_memo_that_changes_the_body_meanwhile_is_survived(shape: str) -> None:
    text = "".join(chr(0x4E2D + i % 50) for i in range(3000))  # not ASCII: a UTF-8 copy
    for _ in range(20):
        if shape == "prompt":
            body: dict[str, Any] = {"prompt": text + "x"}
        elif shape == "parts":
            body = {"messages": [{"role": "user", "content": [
                {"type": "text", "text": text + str(i)}, {"type": "image_url"}]}
                for i in range(4)]}
        else:
            body = {"messages": [{"role": "user", "content": text + str(i)} for i in range(4)]}
        built = _chain_native.build(body, [b"d" * 32] * 4, [7] * 4, 0, 16, 0,
                                    _MeddlingMemo(body))
        assert built is not None and len(built[0]) > 0
