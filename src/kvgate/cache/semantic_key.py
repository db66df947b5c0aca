"""What the semantic cache compares: the exact *partition* and the text compared by meaning.

Kept apart from the index (``semantic.py``, numpy) so the cache stage imports it without numpy:
a gateway with only the exact cache never loads numpy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from kvgate.core.call import Call

#: Fields that change how an answer is delivered, not what it says (as for the exact key).
_DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "request_id"})


@dataclass(frozen=True, slots=True)
class SemanticKey:
    partition: bytes
    text: str


def semantic_key(call: Call) -> SemanticKey | None:
    """The partition and the text to compare, or None when the request has no text to
    compare (a last message that is not the user's, or has no text)."""
    body = call.body
    params = {k: v for k, v in body.items()
              if k not in _DELIVERY_FIELDS and k not in ("messages", "prompt")}
    if call.endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _text_of(last.get("content"))
        context: object = messages[:-1]
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
        context = None
    if not text.strip():
        return None
    material = orjson.dumps([call.tenant, call.model, call.endpoint, params, context,
                             [d.hex() for d in call.image_digests]],
                            option=orjson.OPT_SORT_KEYS)
    return SemanticKey(hashlib.sha256(material).digest(), text)


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""
