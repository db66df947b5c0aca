"""The deterministic tokenizer stand-in."""

from __future__ import annotations

from kvgate.sim.tokenizer import FIRST_TEXT_ID, LAST_TEXT_ID, SimTokenizer


def test_four_characters_per_token_and_determinism() -> None:
    tokenizer = SimTokenizer()
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    assert len(ids) == SimTokenizer.count(text) == 11
    assert ids == SimTokenizer().encode(text)  # independent instances agree
    assert all(FIRST_TEXT_ID <= i <= LAST_TEXT_ID for i in ids)
    assert tokenizer.encode("abcdefgh") != tokenizer.encode("abcdefgi")


def test_pieces_concatenate() -> None:
    tokenizer = SimTokenizer()
    assert tokenizer.encode("abcd" + "efgh") == tokenizer.encode("abcd") + tokenizer.encode("efgh")


def test_memo_stays_bounded() -> None:
    tokenizer = SimTokenizer(memo_size=8)
    first = tokenizer.encode("x" * 3 + "".join(f"{i:04d}" for i in range(100)))
    assert len(tokenizer._memo) <= 8
    assert first == SimTokenizer().encode("x" * 3 + "".join(f"{i:04d}" for i in range(100)))
