"""Build one tiny random-weight model directory. Runs INSIDE the vLLM venv, never in the gateway.

    <venv>/bin/python build_model.py PARAMS.json OUT_DIR

``PARAMS.json`` is written by :mod:`kvgate.testing.vllm.models` (see ``ModelSpec.params``). The
output is a Hugging Face-style directory vLLM serves directly: ``config.json``,
``model.safetensors``, a byte-level BPE tokenizer trained here on the corpus in the params (no
download), a ChatML chat template, and for the vision model the image processor and processor
configs. Same params and same library versions give byte-identical weights and tokenizer.

This file imports torch, tokenizers and transformers, which exist only in the venv; it must not
import anything from ``kvgate`` (the package is not installed there).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE = "<image>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, IMAGE]

# ChatML over plain-string content: vLLM sees a "string" content format and puts the model's
# image placeholder ("<image>" for LLaVA) in front of the text for each image part.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"special token {token!r} missing from the trained vocabulary")
    return token_id


def save_tokenizer(tokenizer: Tokenizer, out: Path, max_len: int, processor: Any = None) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=IM_END, pad_token=END_OF_TEXT,
        model_max_length=max_len, extra_special_tokens={"image_token": IMAGE},
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def llama_config(params: dict[str, Any], vocab_size: int, eos_id: int, pad_id: int) -> Any:
    from transformers import LlamaConfig

    text = params["text"]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_layers"],
        num_attention_heads=text["num_heads"],
        num_key_value_heads=text["num_kv_heads"],
        max_position_embeddings=text["max_position_embeddings"],
        rope_theta=10000.0,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        torch_dtype=params["dtype"],
    )


def build(params: dict[str, Any], out: Path) -> dict[str, Any]:
    torch.manual_seed(params["seed"])
    tokenizer = train_tokenizer(params["corpus"], params["vocab_size"])
    vocab_size = tokenizer.get_vocab_size()
    eos_id = _token_id(tokenizer, IM_END)
    pad_id = _token_id(tokenizer, END_OF_TEXT)
    image_id = _token_id(tokenizer, IMAGE)
    max_len = params["text"]["max_position_embeddings"]
    text_config = llama_config(params, vocab_size, eos_id, pad_id)
    info: dict[str, Any] = {"vocab_size": vocab_size, "eos_token_id": eos_id}
    if params["kind"] == "text":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(text_config)
        config = model.config
        state = model.state_dict()
        save_tokenizer(tokenizer, out, max_len)
    else:
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        vision = params["vision"]
        vision_config = CLIPVisionConfig(
            hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_layers"], num_attention_heads=vision["num_heads"],
            image_size=vision["image_size"], patch_size=vision["patch_size"],
            projection_dim=vision["hidden_size"],
        )
        config = LlavaConfig(
            vision_config=vision_config, text_config=text_config, image_token_index=image_id,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
            projector_hidden_act="gelu", tie_word_embeddings=False, torch_dtype=params["dtype"],
        )
        model = LlavaForConditionalGeneration(config)
        # transformers 5 names the tower `model.vision_tower.*`; vLLM's LLaVA loader maps
        # `model.vision_tower.` to its CLIPVisionModel, whose weights live under `vision_model.`.
        state = {
            (key.replace("model.vision_tower.", "model.vision_tower.vision_model.", 1)
             if key.startswith("model.vision_tower.") else key): value
            for key, value in model.state_dict().items()
        }
        size = vision["image_size"]
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        )
        fast = save_tokenizer(tokenizer, out, max_len)
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=fast, patch_size=vision["patch_size"],
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE, image_token=IMAGE,
        )
        processor.save_pretrained(out)
        info["image_token_id"] = image_id
        info["image_tokens"] = (size // vision["patch_size"]) ** 2
    dtype = getattr(torch, params["dtype"])
    tensors = {key: value.detach().to(dtype).contiguous() for key, value in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    # vLLM picks the model class from `architectures`; without it a LLaVA config resolves to
    # the pooling-only LlavaModel.
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(out)
    info["num_parameters"] = sum(t.numel() for t in tensors.values())
    info["weights_sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    info["tokenizer_sha256"] = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    return info


def main(argv: list[str]) -> int:
    params = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    info = build(params, out)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
