"""The simulated model's tokenizer (shared by `kvgate sim` and `kvgate-sim:` gateways)."""

from __future__ import annotations

from kvgate.vllm_compat.sim_tokenizer import (
    FIRST_TEXT_ID,
    LAST_TEXT_ID,
    MemoTokenizer,
    SimTokenizer,
)


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


def test_memo_tokenizer_agrees_and_hands_out_fresh_lists() -> None:
    memo = MemoTokenizer(min_chars=8, max_texts=2)
    long_text = "a shared system prompt"
    first = memo.encode(long_text)
    assert first == SimTokenizer().encode(long_text)
    first.append(-1)  # a caller extending its ids must not change the remembered ones
    assert memo.encode(long_text) == SimTokenizer().encode(long_text)
    assert memo.encode("short") == SimTokenizer().encode("short")
    assert len(memo._texts) == 1  # short texts are not remembered


def test_memo_tokenizer_stays_bounded() -> None:
    memo = MemoTokenizer(min_chars=1, max_texts=3)
    texts = [f"text number {i}" for i in range(10)]
    for text in texts:
        assert memo.encode(text) == SimTokenizer().encode(text)
        assert len(memo._texts) <= 3
