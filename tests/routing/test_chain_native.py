"""The fingerprint in C: built by the install (CI requires it). Its block loop makes the same
chains as the Python loop to the bit on random data, block sizes and seeds; its whole builder
the same fingerprints and the same memo as the Python builder on random bodies of every shape
(those it leaves to Python included); bad input is refused."""

from __future__ import annotations

import random

import pytest

from kvgate.routing import _chain_native, fingerprint
from kvgate.routing.fingerprint import MessageMemo, py_chain
from tests.routing.factories import call


def test_the_install_built_the_loop_and_the_fingerprint_uses_it() -> None:
    assert fingerprint.NATIVE_CHAIN  # the module's loop is the C one (checked at import)


@pytest.mark.parametrize("seed", range(5))
def test_same_chains_as_the_python_loop(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        data = rng.randbytes(rng.randint(0, 3000))
        size = rng.choice([1, 7, 64, 256, 1000])
        start = rng.randint(0, len(data))
        end = start + (len(data) - start) // size * size
        parent = rng.choice([0, 1, 2**64 - 1, rng.getrandbits(64)])
        c_out: list[int] = [5]  # appended to, as the builder's list is
        py_out: list[int] = [5]
        assert _chain_native.chain(data, start, end, size, parent, c_out) == py_chain(
            data, start, end, size, parent, py_out)
        assert c_out == py_out


def test_whole_prompts_fingerprint_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    text = "".join(rng.choice("abcdef ghij\n\u00e9\u4e2d") for _ in range(20_000))
    calls = []
    for i in range(6):
        request = call()
        request.body = {"messages": [
            {"role": "system", "content": text},
            {"role": "user", "content": text[i * 500:i * 500 + 3000]},
            {"role": "assistant", "content": "x" * i},
            {"role": "user", "content": [{"type": "text", "text": text[:700 + i]}]}]}
        calls.append(request)

    memo = MessageMemo()
    with_c = [fingerprint.fingerprint(c, block_chars=256, memo=memo) for c in calls]
    monkeypatch.setattr(fingerprint, "_chain", py_chain)
    memo = MessageMemo()
    assert [fingerprint.py_fingerprint(c, block_chars=256, memo=memo) for c in calls] == with_c
    assert all(len(fp.hashes) > 100 for fp in with_c)


@pytest.mark.parametrize("args", [
    (b"abcd", 0, 4, 0, 1),      # size 0
    (b"abcd", 0, 8, 4, 1),      # past the end
    (b"abcd", 3, 1, 1, 1),      # start after end
    (b"abcd", 0, 3, 2, 1),      # not whole blocks
])
def test_bad_ranges_are_value_errors(args: tuple[bytes, int, int, int, int]) -> None:
    out: list[int] = []
    with pytest.raises(ValueError):
        _chain_native.chain(*args, out)
    assert out == []


def test_bad_arguments_are_type_or_overflow_errors() -> None:
    with pytest.raises(TypeError):
        _chain_native.chain(b"ab", 0, 2, 1, 0, ())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _chain_native.chain("ab", 0, 2, 1, 0, [])  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _chain_native.chain(b"ab", 0, 2, 1, -1, [])

