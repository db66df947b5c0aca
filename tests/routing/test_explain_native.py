"""The explanation's candidate entries built in C (``_floats_native.explained``): the same
dicts as the Python version, number for number and type for type, and the figures they
write (``ms``, ``tokens_value``) as close to the decimal roundings they stand for as
promised."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvgate.routing import _floats_native as native
from kvgate.routing import explain
from tests.routing.native_compare import outcome, same

_TOKENS = (st.integers(0, 2**40) | st.floats(allow_nan=False, width=64)
           | st.sampled_from([0.0, -0.0, 0.04, -0.04, 0.05, 0.15, 0.25, 2.5, 7168.0, 4725.5,
                              math.inf, -math.inf]))
_SECONDS = st.floats(allow_nan=True, width=64) | st.sampled_from(
    [0.0, -0.0, 1e-7, -4e-7, 5e-7, 1.5e-6, 2.5e-6, 0.0123456789, 1e303, math.inf])


@dataclass(frozen=True)
class _Candidate:
    id: str


def test_the_module_uses_the_c_version() -> None:
    assert explain.explained is native.explained


@given(st.data(), st.integers(1, 40))
def test_entries_match_python(data: st.DataObject, n: int) -> None:
    candidates = [_Candidate(f"r{i}") for i in range(n)]
    matched = data.draw(st.lists(_TOKENS, min_size=n, max_size=n))
    uncached = data.draw(st.lists(_TOKENS, min_size=n, max_size=n))
    costs = data.draw(st.lists(_SECONDS, min_size=n, max_size=n))
    shown = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=8)))
    c_result = native.explained(shown, candidates, matched, uncached, costs)
    py_result = explain.py_explained(shown, candidates, matched, uncached, costs)
    assert same(c_result, py_result), (shown, matched, uncached, costs)
    assert list(c_result) == [candidates[i].id for i in shown]


@pytest.mark.parametrize("args", [
    ([3], [_Candidate("a")], [1], [1], [1.0]),  # index out of range
    ([0], [object()], [1], [1], [1.0]),  # a candidate without an id
    ([0], [_Candidate("a")], [None], [1], [1.0]),  # a token count that is not a number
    ([0], [_Candidate("a")], [1], [1], [None]),  # a cost that is not a number
    ([0], [_Candidate("a")], [1], [1], [10**400]),  # a cost too large for a float
    (5, [_Candidate("a")], [1], [1], [1.0]),  # not a sequence
])
def test_bad_input_is_refused_like_the_python_version(args: tuple[Any, ...]) -> None:
    c_result = outcome(native.explained, *args)
    assert c_result[0] == "error"
    assert c_result == outcome(explain.py_explained, *args)


@given(st.floats(-1e6, 1e6))
def test_ms_is_the_milliseconds_to_the_microsecond(seconds: float) -> None:
    # The figure round(x * 1e3, 3) writes, but for halves below the microsecond.
    value = explain.ms(seconds)
    assert abs(value - seconds * 1e3) <= 0.0005 + 1e-9 * abs(seconds * 1e3)
    assert abs(value - round(seconds * 1e3, 3)) <= 0.0010001 * max(1.0, abs(seconds))


def test_ms_and_tokens_write_plain_figures() -> None:
    assert explain.ms(0.0123456789) == 12.346
    assert explain.ms(2.5e-6) == 0.002 and explain.ms(3.5e-6) == 0.004  # halves to even
    assert math.copysign(1.0, explain.ms(-1e-7)) == 1.0  # no "-0.0" in a response
    assert explain.ms(math.inf) == math.inf
    assert explain.tokens_value(7168) == 7168 and type(explain.tokens_value(7168.0)) is int
    assert explain.tokens_value(4725.46) == 4725.5
    assert math.copysign(1.0, explain.tokens_value(-0.04)) == 1.0
    assert explain.tokens_value(math.inf) == math.inf
