"""The simulated models' prompt format: OpenAI messages -> token ids and image placeholders.

``kvgate sim`` replicas render prompts with it, and so does a gateway configured with a
``kvgate-sim:<profile>`` tokenizer, whose block hashes must match the replica's token for token.
It lives here, not in ``kvgate.sim``, so the serving path never imports the simulator; the
simulator adds what only it needs (the seed of the answer it will generate) on top.

Rendering follows what vLLM does for the profile's model, with the simulated tokenizer:

- chat templates insert special-token ids directly (ChatML for Qwen2-based LLaVA-OneVision,
  the Llama 3 header format for Llama 3.1), and each message's text is tokenized on its own, so
  editing a later message never shifts the tokens of an earlier one;
- images come first in their message, each as N copies of the image token followed by "\\n",
  then the message's text parts joined by "\\n" (vLLM's placement for models without explicit
  placeholders in the text);
- an image's identifier is vLLM's mm hash of its encoded bytes (data: URLs), the client's part
  `uuid` when given, or -- since nothing here fetches -- the hash of an http(s) URL string;
- `continue_final_message` renders the last (assistant) message without its end-of-turn marker,
  so generation continues it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from kvgate.vllm_compat.hashing import MMPlaceholder
from kvgate.vllm_compat.image_header import read_image_header
from kvgate.vllm_compat.mm_hash import image_mm_hash
from kvgate.vllm_compat.sim_tokenizer import SimTokenizer
from kvgate.vllm_compat.vision_tokens import llava_onevision_image_tokens

ChatTemplateKind = Literal["chatml", "llama3"]
VisionTokenRule = Literal["llava_onevision", "fixed"]

# Qwen2 / ChatML special tokens.
IM_START_ID, IM_END_ID = 151_644, 151_645
# Llama 3 special tokens.
LLAMA3_BOS_ID, LLAMA3_START_HEADER_ID, LLAMA3_END_HEADER_ID, LLAMA3_EOT_ID = (
    128_000, 128_006, 128_007, 128_009,
)


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How one simulated model turns a request into tokens (the GPU does not matter here)."""

    chat_template: ChatTemplateKind
    image_token_id: int
    vision_token_rule: VisionTokenRule
    #: Placeholder tokens of an image whose size is unknown (and of every image under "fixed").
    default_image_tokens: int

    @property
    def accepts_images(self) -> bool:
        """Whether the model takes image inputs (vLLM rejects them for text-only models)."""
        return self.vision_token_rule == "llava_onevision" or self.default_image_tokens > 0

    @property
    def eos_token_id(self) -> int:
        """The end-of-turn token that ends a generated answer."""
        return IM_END_ID if self.chat_template == "chatml" else LLAMA3_EOT_ID

    def image_tokens(self, width: int | None, height: int | None) -> int:
        """Placeholder tokens one image occupies (the image's size when known)."""
        if self.vision_token_rule == "llava_onevision" and width and height:
            return llava_onevision_image_tokens(width, height)
        return self.default_image_tokens


LLAVA_ONEVISION_QWEN2 = PromptFormat(
    chat_template="chatml",
    image_token_id=151_646,
    vision_token_rule="llava_onevision",
    default_image_tokens=6_561,  # 9 crops x 729, the "6.5k" of the seed's measurements
)
LLAMA_31 = PromptFormat(
    chat_template="llama3",
    image_token_id=128_256,
    vision_token_rule="fixed",
    default_image_tokens=0,  # text-only: image parts are rejected with 400, as vLLM does
)

# The tiny random-weight models that kvgate.testing.vllm serves with real vLLM: a ChatML template
# (the builder's), and for tiny-llava every image as 576 placeholders ((336 px / 14 px)^2, its
# CLIP tower's patches; its processor resizes any image to 336 x 336).
TINY_CHATML = PromptFormat(
    chat_template="chatml",
    image_token_id=151_646,
    vision_token_rule="fixed",
    default_image_tokens=0,  # tiny-llama is text-only
)
TINY_LLAVA_CHATML = PromptFormat(
    chat_template="chatml",
    image_token_id=151_646,
    vision_token_rule="fixed",
    default_image_tokens=576,
)

#: Formats by ``kvgate sim`` profile name, the ``<profile>`` of a ``kvgate-sim:<profile>``
#: tokenizer. ``kvgate.sim.profiles`` builds each profile on its entry here.
PROMPT_FORMATS: Mapping[str, PromptFormat] = MappingProxyType({
    "llava-onevision-7b-a40": LLAVA_ONEVISION_QWEN2,
    "llama-3.1-8b-h100": LLAMA_31,
    "cpu-tiny-llama": TINY_CHATML,
    "cpu-tiny-llava": TINY_LLAVA_CHATML,
})


class PromptError(ValueError):
    """The request's messages or prompt cannot be rendered (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class SimPrompt:
    """A rendered request: token ids and image placeholders."""

    token_ids: list[int]
    mm_items: tuple[MMPlaceholder, ...]
    #: Leading ids that a fresh request renders: all but the re-tokenized partial answer of
    #: ``continue_final_message``, so a continuation can be told which answer it continues.
    num_fresh_tokens: int
    partial_answer: str = ""


class _Builder:
    """Accumulates ids and image placeholders with their offsets."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.mm_items: list[MMPlaceholder] = []


class SimPromptRenderer:
    """Renders requests for one simulated model; owns the image-token policy."""

    def __init__(
        self,
        prompt_format: PromptFormat,
        tokenizer: SimTokenizer,
        *,
        model_id: str,
        image_tokens: int | None = None,
    ) -> None:
        """``model_id`` keys image hashes (vLLM mixes the served model name in);
        ``image_tokens`` fixes every image's placeholder count (else the format's rule)."""
        self.prompt_format = prompt_format
        self.tokenizer = tokenizer
        self._model_id = model_id
        self._fixed_image_tokens = image_tokens

    def render_chat(
        self,
        messages: Sequence[Any],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> SimPrompt:
        if not messages:
            raise PromptError("messages must be a non-empty list")
        if continue_final_message and add_generation_prompt:
            raise PromptError(
                "continue_final_message and add_generation_prompt cannot both be true"
            )
        history = list(messages)
        partial = ""
        if continue_final_message:
            last = history.pop()
            if not isinstance(last, dict) or last.get("role") != "assistant":
                raise PromptError("continue_final_message needs a final assistant message")
            partial = _content_text(last.get("content"))
        builder = _Builder()
        if self.prompt_format.chat_template == "llama3":
            builder.ids.append(LLAMA3_BOS_ID)
        for message in history:
            self._render_message(builder, message)
        if add_generation_prompt or continue_final_message:
            self._open_turn(builder, "assistant")
        num_fresh_tokens = len(builder.ids)
        builder.ids.extend(self.tokenizer.encode(partial))
        return SimPrompt(builder.ids, tuple(builder.mm_items), num_fresh_tokens, partial)

    def render_completion(self, prompt: Any) -> SimPrompt:
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]  # the API allows a batch; a replica serves one prompt
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            if self.prompt_format.chat_template == "llama3":
                ids.insert(0, LLAMA3_BOS_ID)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise PromptError("prompt must be a string or a list of token ids")
        return SimPrompt(ids, (), len(ids))

    def _open_turn(self, builder: _Builder, role: str) -> None:
        if self.prompt_format.chat_template == "chatml":
            builder.ids.append(IM_START_ID)
            builder.ids.extend(self.tokenizer.encode(role + "\n"))
        else:
            builder.ids.append(LLAMA3_START_HEADER_ID)
            builder.ids.extend(self.tokenizer.encode(role))
            builder.ids.append(LLAMA3_END_HEADER_ID)
            builder.ids.extend(self.tokenizer.encode("\n\n"))

    def _render_message(self, builder: _Builder, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise PromptError("each message needs a string 'role'")
        self._open_turn(builder, message["role"])
        content = message.get("content")
        texts: list[str] = []
        for part in _content_parts(content):
            kind = part.get("type")
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                self._add_image(builder, part)
            else:
                raise PromptError(f"unsupported content part type {kind!r}")
        builder.ids.extend(self.tokenizer.encode("\n".join(texts)))
        if self.prompt_format.chat_template == "chatml":
            builder.ids.append(IM_END_ID)
            builder.ids.extend(self.tokenizer.encode("\n"))
        else:
            builder.ids.append(LLAMA3_EOT_ID)

    def _add_image(self, builder: _Builder, part: dict[str, Any]) -> None:
        if not self.prompt_format.accepts_images:
            raise PromptError(f"{self._model_id} does not accept image inputs")
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str) or not url:
            raise PromptError("image_url part needs a url")
        uuid = part.get("uuid") if isinstance(part.get("uuid"), str) else None
        identifier, num_tokens = self.resolve_image(url, uuid)
        builder.mm_items.append(MMPlaceholder(identifier, len(builder.ids), num_tokens))
        builder.ids.extend([self.prompt_format.image_token_id] * num_tokens)
        builder.ids.extend(self.tokenizer.encode("\n"))

    def resolve_image(self, url: str, uuid: str | None = None) -> tuple[str, int]:
        """(identifier, placeholder tokens) of one image URL; never fetches anything."""
        width = height = None
        if url.startswith("data:"):
            data = _decode_data_url(url)
            header = read_image_header(data)
            if header is not None:
                width, height = header.width, header.height
            plain_rgb = header is None or header.is_plain_rgb
            identifier = uuid or image_mm_hash(data, self._model_id, plain_rgb=plain_rgb)
        elif url.startswith(("http://", "https://")):
            identifier = uuid or image_mm_hash(url.encode("utf-8"), self._model_id)
        else:
            raise PromptError("image url must be a data: URL or an http(s) URL")
        if self._fixed_image_tokens is not None:
            return identifier, self._fixed_image_tokens
        return identifier, self.prompt_format.image_tokens(width, height)


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return content
    raise PromptError("message content must be a string or a list of parts")


def _content_text(content: Any) -> str:
    return "\n".join(
        str(part.get("text", "")) for part in _content_parts(content) if part.get("type") == "text"
    )


def _decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise PromptError("malformed data: URL")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return payload.encode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise PromptError(f"bad base64 in data: URL: {exc}") from exc


__all__ = [
    "IM_END_ID", "IM_START_ID", "LLAMA3_BOS_ID", "LLAMA3_END_HEADER_ID", "LLAMA3_EOT_ID",
    "LLAMA3_START_HEADER_ID", "LLAMA_31", "LLAVA_ONEVISION_QWEN2", "PROMPT_FORMATS",
    "TINY_CHATML", "TINY_LLAVA_CHATML",
    "ChatTemplateKind", "PromptError", "PromptFormat", "SimPrompt", "SimPromptRenderer",
    "VisionTokenRule",
]
