"""A tiny Hugging Face tokenizer with a ChatML template, built locally (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

WORDS = ("system", "user", "assistant", "you", "are", "a", "helpful", "bot", "hello", "world",
         "what", "is", "in", "this", "picture", "tell", "me", "about", "kv", "caches", "please",
         "the", "and", "of", "to")
SPECIAL = ["<|im_start|>", "<|im_end|>", "<image>", "<s>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(directory: Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json; ids: [UNK]=0, words 1.., specials after."""
    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"chat_template": CHATML, "bos_token": "<s>", "eos_token": "<|im_end|>",
              "image_token": "<image>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
