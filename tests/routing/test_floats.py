"""The scorer's per-candidate passes in C: built by the install (CI requires it), the same
results as their Python versions on random lists of floats and ints (infinities, negative
zero, ties included), and bad input refused as the Python versions refuse it."""

from __future__ import annotations

import math
import random
from array import array
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvgate import native as native_module
from kvgate.config.schema import PrefixRoutingSettings
from kvgate.routing import _floats_native as native
from kvgate.routing import explain, floats, ttft_scorer
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from tests.routing.factories import deployment, finish_some
from tests.routing.native_compare import outcome, same
from tests.support.clock import FakeClock

# Ties are common in the scorer (idle replicas cost the same): draw from a few values often.
_FEW = st.sampled_from([0.0, -0.0, 1.0, 2.5, 7168, math.inf, -math.inf, 3])
_ANY = st.floats(allow_nan=False, width=64) | st.integers(-(2**40), 2**40)
NUMBERS = st.lists(_FEW | _ANY, max_size=40)
#: The arithmetic's first operands are always floats in the scorer (costs, rates, fills).
FLOATS = st.lists(_FEW.map(float) | st.floats(allow_nan=False), max_size=40)
#: (native, Python) pairs: every public pass.
PAIRS = {name: (getattr(native, name), getattr(floats, f"py_{name}"))
         for name in ("add_scaled", "add_product", "multiply", "minimum", "maximum", "argmin",
                      "where_le", "where_ge", "where_lt", "smallest", "largest", "prefix_sums")}


def check(name: str, *args: Any) -> None:
    c_result, py_result = (outcome(f, *args) for f in PAIRS[name])
    assert c_result[0] == py_result[0], (name, args, c_result, py_result)
    assert same(c_result[1], py_result[1]), (name, args, c_result, py_result)


def test_the_install_built_the_c_passes_and_the_module_uses_them() -> None:
    # `pip install -e .` compiles them (setup.py); the Python versions are only for machines
    # without a compiler, so CI fails here rather than quietly measuring the slow ones.
    assert floats.NATIVE_AVAILABLE
    assert floats.where_le is native.where_le and floats.smallest is native.smallest


@given(FLOATS, FLOATS, NUMBERS, _FEW | _ANY)
def test_arithmetic_matches_python_to_the_bit(a: list[float], b: list[float], c: list[float],
                                              x: float) -> None:
    # Unequal lengths too: both cut to the shortest (map's rule). Token counts (c, x) may be
    # ints.
    check("add_scaled", a, b, x)
    check("add_product", a, b, c, x)
    check("multiply", a, c)


@given(NUMBERS, _FEW | _ANY, st.lists(st.integers(-45, 45), max_size=12))
def test_selections_match_python(values: list[float], limit: float, among: list[int]) -> None:
    for name in ("minimum", "maximum"):
        check(name, values)
        check(name, values, among)  # out-of-range indexes: IndexError from both
    check("argmin", values)
    ints = [int(v) if abs(v) < 2**40 else 7 for v in values]  # token counts
    check("prefix_sums", ints, among)  # out-of-range indexes: IndexError from both
    check("prefix_sums", ints, [len(ints), 0, len(ints) // 2, 0])
    check("prefix_sums", values, [0])  # a float token count: TypeError from both
    for name in ("where_le", "where_ge"):
        check(name, values, limit)
        check(name, values, limit, among)
    check("where_lt", values, list(reversed(values)))
    for k in (0, 1, 7, 8, 50):
        check("smallest", values, k)
        check("largest", values, k)


@given(FLOATS, FLOATS, _FEW | _ANY, st.lists(st.integers(-45, 45), max_size=12))
def test_arrays_of_doubles_are_read_in_place_with_the_same_results(
        a: list[float], b: list[float], x: float, among: list[int]) -> None:
    # The arithmetic returns array('d') (no float object per candidate) and every pass reads
    # one in place: the same results as the Python versions on the same arrays, and as the
    # C passes on the lists of the same floats.
    da, db = array("d", a), array("d", b)
    for name, args in [("add_scaled", (da, db, x)), ("add_scaled", (da, b, x)),
                       ("add_product", (da, db, db, x)), ("multiply", (da, b)),
                       ("minimum", (da,)), ("maximum", (da, among)), ("argmin", (da,)),
                       ("where_le", (da, x)), ("where_ge", (da, x, among)),
                       ("where_lt", (da, db)), ("smallest", (da, 3)), ("largest", (da, 50))]:
        check(name, *args)
        as_lists = [list(arg) if isinstance(arg, array) else arg for arg in args]
        in_place, from_lists = (outcome(PAIRS[name][0], *each) for each in (args, as_lists))
        assert in_place[0] == from_lists[0] and same(in_place[1], from_lists[1]), name


def test_the_arithmetic_returns_arrays_of_doubles_and_other_buffers_are_sequences() -> None:
    assert isinstance(native.add_scaled([1.0], [2], 3), array)
    assert native.add_scaled([1.0], [2], 3).typecode == "d"
    assert floats.py_multiply([2.0], [0.5]) == array("d", [1.0])
    # Only an array of doubles is read in place; an array of ints is a sequence like a list,
    # and an index list (``among``) is never read as doubles.
    assert native.minimum(array("i", [3, 1, 2])) == 1
    assert native.where_le(array("d", [1.0, 5.0, 0.5]), 1.0, array("i", [2, 0])) == [2, 0]
    with pytest.raises(TypeError):
        native.where_le(array("d", [1.0]), 1.0, array("d", [0.0]))  # a float index
    # A buffer of doubles that is not contiguous is read as a sequence too.
    strided = memoryview(array("d", [5.0, 9.0, 1.0, 9.0, 3.0]))[::2]
    assert native.minimum(strided) == floats.py_minimum(strided) == 1.0
    assert native.where_le(strided, 3.0) == floats.py_where_le(strided, 3.0) == [1, 2]


def test_minimum_returns_the_items_own_object_and_the_first_of_equals() -> None:
    values: list[float] = [3, 1.0, 1, 2]
    assert same(floats.minimum(values), 1.0)  # the float, which comes first
    assert same(floats.maximum([2, 5, 5.0]), 5)
    assert floats.argmin([4.0, 0.5, 0.5]) == 1
    assert floats.smallest([1.0, 0.0, 0.0, 0.0], 2) == [1, 2]
    assert floats.largest([0.0, 1.0, 1.0, 1.0], 2) == [1, 2]


@pytest.mark.parametrize("name, args", [
    ("minimum", ([],)),
    ("argmin", ([],)),
    ("minimum", ([1.0, 2.0], [5])),
    ("where_le", ([1.0, "2"], 1.5)),
    ("where_lt", ([1.0], ["x"])),
    ("add_scaled", ([1.0], [2.0], "x")),
    ("add_product", ([1.0], [None], [1.0], 2.0)),
    ("multiply", ([10**400], [1.0])),
    ("smallest", ([1.0, object()], 1)),
    ("where_ge", (5, 1.0)),
    ("prefix_sums", ([1, 2], [3])),
    ("prefix_sums", ([1, 2], [-1])),
    ("prefix_sums", ([1, 2.5], [1])),
])
def test_bad_input_is_refused_like_the_python_versions(name: str, args: tuple[Any, ...]) -> None:
    c_result, py_result = (outcome(f, *args) for f in PAIRS[name])
    assert c_result[0] == "error", (name, c_result)
    assert c_result == py_result


def test_wrong_argument_counts_are_type_errors() -> None:
    with pytest.raises(TypeError):
        native.where_le([1.0])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native.where_lt([1.0], [1.0], [0])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native.add_scaled([1.0], [1.0])  # type: ignore[call-arg]


def _python_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The floats module as an install without a compiler has it."""
    for name in PAIRS:
        monkeypatch.setattr(floats, name, getattr(floats, f"py_{name}"))
    monkeypatch.setattr(ttft_scorer, "explained", explain.py_explained)  # its own name for it
    monkeypatch.setattr(ttft_scorer, "native_decide", None)


def _decisions(seed: int, replicas: int) -> list[tuple[str, dict[str, object]]]:
    """A long random run of scorer decisions: a fleet where some KV sizes are known and some
    not, queues that fill and drain, ties, matches, failover subsets, offloaded tokens and
    replicas that lost what they were sent (``known``)."""
    rng = random.Random(seed)
    sizes = [rng.choice([None, 6_000, 20_000, 400_000]) for _ in range(replicas)]
    fleet = [deployment(f"r{i}", **({} if size is None else {"kv_capacity_tokens": size}))
             for i, size in enumerate(sizes)]
    clock = FakeClock(0.0)
    scorer = TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16, clock=clock)
    open_tickets: list[Ticket] = []
    out: list[tuple[str, dict[str, object]]] = []
    for _ in range(400):
        clock.now_s += rng.choice([0.0, 0.01, 0.2, 3.0])
        prompt = rng.choice([64, 4_725, 8_192])
        matched = [rng.choice([0, 0, 0, prompt // 2, prompt]) if rng.random() < 0.3 else 0
                   for _ in fleet]
        candidates, positions = fleet, None
        if rng.random() < 0.2:  # a failover attempt: a subset, in another order
            positions = rng.sample(range(len(fleet)), rng.randint(1, len(fleet)))
            candidates = [fleet[p] for p in positions]
            matched = [matched[p] for p in positions]
        offloaded = ([float(rng.choice([0, 100])) for _ in candidates]
                     if rng.random() < 0.2 else None)
        known = ([float(rng.choice([0, 0, 500])) for _ in candidates]
                 if rng.random() < 0.3 else None)
        decision, pick = scorer.choose(candidates, prompt, matched, max(matched),
                                       positions=positions, offloaded=offloaded, known=known)
        out.append((decision.deployment.id, decision.explanation))
        position = pick if positions is None else positions[pick]
        open_tickets.append(scorer.ledger.dispatched(
            position, prompt - matched[pick], prompt_tokens=prompt))
        finish_some(scorer.ledger, open_tickets, rng, clock, 0.5)
    return out


@pytest.mark.parametrize(("seed", "replicas"), [(1, 3), (2, 40), (3, 300)])
def test_the_scorer_decides_the_same_on_the_python_passes(
        seed: int, replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same decisions and explanations, number for number, as an install without a
    # compiler: the C passes change the cost of a decision, not the decision.
    with_c = _decisions(seed, replicas)
    _python_passes(monkeypatch)
    assert floats.where_le is floats.py_where_le
    assert vars(ttft_scorer)["explained"] is explain.py_explained
    assert _decisions(seed, replicas) == with_c
    outcomes = {str(explanation["outcome"]) for _, explanation in with_c}
    assert {"hit", "cold"} <= outcomes  # the run exercised more than one path


def test_an_install_without_the_c_passes_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(floats, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(native_module, "_warned", set())
    fleet = [deployment("r0"), deployment("r1")]
    with caplog.at_level("WARNING", logger="kvgate.routing"):
        for _ in range(2):
            TTFTScorer("t", fleet, PrefixRoutingSettings(), block_tokens=16)
    warnings = [r for r in caplog.records if "_floats_native is not built" in r.message]
    assert len(warnings) == 1
