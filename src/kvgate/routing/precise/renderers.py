"""Prompt token ids as a vLLM replica computes them: chat template, tokenizer, image placeholders.

- ``HFRenderer``: a local Hugging Face tokenizer directory (``tokenizer.json``, and the chat
  template from ``chat_template.jinja`` or ``tokenizer_config.json``), rendered with Jinja2 the
  way ``transformers.apply_chat_template`` does (sandboxed, ``trim_blocks``/``lstrip_blocks``,
  ``tojson``, ``raise_exception``, ``strftime_now``). Needs the ``tokenizers`` package
  (``pip install kvgate[precise]``); nothing is downloaded. Jinja2 and tokenizers are imported
  when one is built, so a gateway that configures none never loads them.
- ``SimRenderer`` (``kvgate-sim:<profile>``): the simulated model's renderer, the one a
  ``kvgate sim`` replica uses (``kvgate.vllm_compat.sim_prompt``), so routing in front of
  simulated replicas is token-exact without importing the simulator.

Chat prompts follow vLLM: the template renders text, which is tokenized without adding special
tokens; completions are tokenized with them. For templates that take string content, a
message's image placeholders come first, then its text parts, joined by newlines (vLLM's
placement); each placeholder token then expands to the image's vision tokens.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvgate.core.call import Call
from kvgate.vllm_compat.hashing import MMPlaceholder
from kvgate.vllm_compat.image_header import read_image_header
from kvgate.vllm_compat.mm_hash import mm_identifier
from kvgate.vllm_compat.sim_prompt import PROMPT_FORMATS, PromptError, SimPromptRenderer
from kvgate.vllm_compat.sim_tokenizer import MemoTokenizer

SIM_SCHEME = "kvgate-sim:"
_ITERATES_CONTENT = re.compile(r"for\s+\w+\s+in\s+\w+(\[['\"]content['\"]\]|\.content)")


class RenderError(ValueError):
    """The request cannot be rendered as the replica would (it will route without hashes)."""


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    token_ids: list[int]
    mm_items: tuple[MMPlaceholder, ...]
    #: Leading tokens known exactly; fewer than ``len(token_ids)`` when an image could not be
    #: placed or identified (its blocks and everything after are left unhashed).
    exact_tokens: int


class PromptRenderer(Protocol):
    def render(self, call: Call) -> RenderedPrompt:
        """The prompt's token ids and image placeholders; RenderError if impossible."""
        ...


def load_renderer(spec: str, *, model_id: str, image_tokens: int | None) -> PromptRenderer:
    """A renderer from a deployment's ``tokenizer`` setting (read once, at start-up)."""
    if spec.startswith(SIM_SCHEME):
        return SimRenderer(spec[len(SIM_SCHEME):], model_id=model_id, image_tokens=image_tokens)
    return HFRenderer(Path(spec).expanduser(), model_id=model_id, image_tokens=image_tokens)


def _chat_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    continue_final = bool(body.get("continue_final_message", False))
    add_generation = bool(body.get("add_generation_prompt", not continue_final))
    return add_generation, continue_final


class SimRenderer:
    """The simulated model's tokenizer and chat template, for a named ``kvgate sim`` profile."""

    def __init__(self, profile: str, *, model_id: str, image_tokens: int | None) -> None:
        prompt_format = PROMPT_FORMATS.get(profile)
        if prompt_format is None:
            raise ValueError(f"tokenizer {SIM_SCHEME}{profile}: unknown profile (known: "
                             f"{', '.join(PROMPT_FORMATS)})")
        # Shared system prompts and resent conversation turns recur across requests: their
        # ids are remembered (bounded) instead of recomputed per request.
        tokenizer = MemoTokenizer(min_chars=512, max_texts=1024)
        self._renderer = SimPromptRenderer(prompt_format, tokenizer, model_id=model_id,
                                           image_tokens=image_tokens)

    def render(self, call: Call) -> RenderedPrompt:
        body = call.body
        try:
            if call.endpoint == "chat":
                add_generation, continue_final = _chat_flags(body)
                prompt = self._renderer.render_chat(
                    body.get("messages") or [], add_generation_prompt=add_generation,
                    continue_final_message=continue_final,
                )
            else:
                prompt = self._renderer.render_completion(body.get("prompt"))
        except PromptError as exc:
            raise RenderError(str(exc)) from exc
        return RenderedPrompt(prompt.token_ids, prompt.mm_items, len(prompt.token_ids))


class HFRenderer:
    """A Hugging Face tokenizer and chat template from a local directory."""

    def __init__(self, directory: Path, *, model_id: str, image_tokens: int | None) -> None:
        # Imported here, not at module level: only a configured local tokenizer needs them.
        try:
            from jinja2 import TemplateError
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ValueError(
                "a local tokenizer needs the 'tokenizers' and 'jinja2' packages: "
                "pip install kvgate[precise]"
            ) from exc
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer {directory}: no tokenizer.json there")
        self._tokenizer = Tokenizer.from_file(str(path))
        config = _read_json(directory / "tokenizer_config.json")
        self._special = {
            name: _token_text(config.get(name)) for name in (
                "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token")
        }
        template = _chat_template(directory, config)
        try:
            self._template = _compile(template) if template else None
        except TemplateError as exc:
            raise ValueError(f"tokenizer {directory}: chat template does not compile: {exc}"
                             ) from exc
        self._string_content = template is None or not _ITERATES_CONTENT.search(template)
        # What a render may raise: the template's own checks (raise_exception) and its
        # mistakes alike; kept here so rendering needs no import.
        self._template_errors: tuple[type[Exception], ...] = (
            TemplateError, TypeError, ValueError, LookupError, AttributeError)
        self._image_placeholder = str(config.get("image_token") or "<image>")
        self._image_token_id = self._tokenizer.token_to_id(self._image_placeholder)
        self._model_id = model_id
        self._image_tokens = image_tokens
        self._llava_onevision = "llava-onevision" in model_id.lower()

    def render(self, call: Call) -> RenderedPrompt:
        body = call.body
        images: list[tuple[str, str | None]] = []
        if call.endpoint == "chat":
            text = self._render_chat(body, images)
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return RenderedPrompt(list(prompt), (), len(prompt))
            if not isinstance(prompt, str):
                raise RenderError("prompt must be a string or token ids")
            ids = self._tokenizer.encode(prompt, add_special_tokens=True).ids
        if not images:
            return RenderedPrompt(ids, (), len(ids))
        return self._place_images(ids, images)

    def _render_chat(self, body: dict[str, Any], images: list[tuple[str, str | None]]) -> str:
        if self._template is None:
            raise RenderError("the tokenizer has no chat template")
        messages = [self._message(m, images) for m in body.get("messages") or []]
        add_generation, continue_final = _chat_flags(body)
        kwargs = dict(body.get("chat_template_kwargs") or {})
        context = {**{k: v for k, v in self._special.items() if v is not None}, **kwargs,
                   "messages": messages, "add_generation_prompt": add_generation}
        if body.get("tools") is not None:
            context["tools"] = body["tools"]
        try:
            text: str = self._template.render(**context)
        except self._template_errors as exc:
            raise RenderError(f"chat template failed: {exc}") from exc
        if continue_final and messages:
            text = _cut_after_final(text, messages[-1].get("content"))
        return text

    def _message(self, message: Any, images: list[tuple[str, str | None]]) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise RenderError("each message must be an object")
        content = message.get("content")
        if not isinstance(content, list):
            return dict(message)
        texts: list[str] = []
        parts: list[dict[str, Any]] = []
        placeholders: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                uuid = part.get("uuid") if isinstance(part.get("uuid"), str) else None
                images.append((str(url), uuid))
                placeholders.append(self._image_placeholder)
                parts.append({"type": "image"})
            else:
                raise RenderError(f"content part {kind!r} is not hashed")
        rendered = dict(message)
        rendered["content"] = ("\n".join(placeholders + texts) if self._string_content
                               else parts)
        return rendered

    def _place_images(self, ids: list[int], images: list[tuple[str, str | None]],
                      ) -> RenderedPrompt:
        """Expand each placeholder token to the image's vision tokens, in prompt order."""
        out: list[int] = []
        items: list[MMPlaceholder] = []
        exact: int | None = None
        image_index = 0
        for token in ids:
            if token != self._image_token_id or image_index >= len(images):
                out.append(token)
                continue
            url, uuid = images[image_index]
            image_index += 1
            resolved = self._resolve_image(url, uuid) if exact is None else None
            if resolved is None:
                exact = len(out) if exact is None else exact
                out.append(token)
                continue
            identifier, count = resolved
            items.append(MMPlaceholder(identifier, len(out), count))
            out.extend([token] * count)
        if image_index < len(images) and exact is None:
            exact = len(out)  # the template did not place every image: stop before guessing
        return RenderedPrompt(out, tuple(items), len(out) if exact is None else exact)

    def _resolve_image(self, url: str, uuid: str | None) -> tuple[str, int] | None:
        if not url.startswith("data:"):
            return None  # vLLM hashes the fetched bytes, which the gateway does not have
        data = _decode_data_url(url)
        if data is None:
            return None
        header = read_image_header(data)
        count = self._image_tokens
        if count is None and self._llava_onevision and header is not None:
            from kvgate.vllm_compat.vision_tokens import llava_onevision_image_tokens

            count = llava_onevision_image_tokens(header.width, header.height)
        if count is None:
            return None
        return mm_identifier(data, self._model_id, uuid), count


def _decode_data_url(url: str) -> bytes | None:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


def _cut_after_final(text: str, content: Any) -> str:
    """``continue_final_message``: keep the render up to the end of the final message."""
    final = content if isinstance(content, str) else ""
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        final = str(content[-1].get("text", ""))
    for candidate in (final, final.strip()):
        if candidate and candidate in text:
            return text[: text.rindex(candidate) + len(candidate)]
    return text


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    separate = directory / "chat_template.jinja"
    if separate.is_file():
        return separate.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: vLLM uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _compile(source: str) -> Any:
    """The template compiled as transformers compiles chat templates."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


__all__ = ["SIM_SCHEME", "HFRenderer", "RenderError", "RenderedPrompt", "SimRenderer",
           "load_renderer"]
