"""Deterministic answers, and continuation of a partial answer (streaming failover)."""

from __future__ import annotations

import pytest

from kvgate.sim.filler import FILLER_PIECES, natural_length, plan_answer
from kvgate.sim.tokenizer import SimTokenizer

EOS = 151_645
TOK = SimTokenizer()


def test_same_seed_same_answer_and_natural_stop() -> None:
    a = plan_answer(1234, TOK, EOS, 10_000)
    b = plan_answer(1234, TOK, EOS, 10_000)
    assert a == b and a.finish_reason == "stop"
    assert len(a.pieces) == natural_length(1234) + 1 and a.token_ids[-1] == EOS
    assert a.pieces[-1] == ""
    assert plan_answer(99, TOK, EOS, 10_000).text != a.text


def test_max_tokens_truncates_with_length() -> None:
    plan = plan_answer(1234, TOK, EOS, 5)
    assert len(plan.pieces) == 5 and plan.finish_reason == "length"
    assert plan_answer(1234, TOK, EOS, 10_000).text.startswith(plan.text)


def test_every_piece_is_one_token_that_retokenizes_identically() -> None:
    plan = plan_answer(77, TOK, EOS, 50, ignore_eos=True)
    assert all(len(piece) == 4 for piece in FILLER_PIECES)
    assert TOK.encode(plan.text) == list(plan.token_ids)


@pytest.mark.parametrize("cut", [0, 1, 4, 17, 18, 19, 41])
def test_partial_plus_continuation_equals_full_answer(cut: int) -> None:
    full = plan_answer(4242, TOK, EOS, 10_000)
    partial = full.text[:cut]
    rest = plan_answer(4242, TOK, EOS, 10_000, partial=partial)
    assert partial + rest.text == full.text
    assert rest.finish_reason == "stop"


def test_continuation_honours_its_own_max_tokens() -> None:
    full = plan_answer(4242, TOK, EOS, 10_000)
    rest = plan_answer(4242, TOK, EOS, 3, partial=full.text[:10])
    assert len(rest.pieces) == 3 and rest.finish_reason == "length"
    assert full.text.startswith(full.text[:10] + rest.text)


def test_partial_covering_the_whole_answer_just_stops() -> None:
    full = plan_answer(4242, TOK, EOS, 10_000)
    rest = plan_answer(4242, TOK, EOS, 10_000, partial=full.text)
    assert rest.pieces == ("",) and rest.token_ids == (EOS,) and rest.finish_reason == "stop"


def test_min_tokens_and_ignore_eos() -> None:
    natural = natural_length(5)
    longer = plan_answer(5, TOK, EOS, 10_000, min_tokens=natural + 10)
    assert len(longer.pieces) == natural + 10 and longer.finish_reason == "stop"
    forced = plan_answer(5, TOK, EOS, natural + 50, ignore_eos=True)
    assert len(forced.pieces) == natural + 50 and forced.finish_reason == "length"
