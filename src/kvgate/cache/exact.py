"""The exact-match cache's key, and cached answers replayed as streams.

Only deterministic requests are cached (``temperature`` 0 or a ``seed``), one choice each, and
the key holds the tenant as a hard partition: tenant B can never read tenant A's entry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator

import orjson

from kvgate.core.call import Call
from kvgate.core.provider import ChunkBatch, JSONObject

#: Fields that change how an answer is delivered, not what it says.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "request_id"})


def is_cacheable(body: JSONObject) -> bool:
    if body.get("n") not in (None, 1):
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(call: Call) -> bytes:
    """sha256 over the canonical (sorted-key) JSON of what determines the answer."""
    material = {k: v for k, v in call.body.items() if k not in _DELIVERY_FIELDS}
    canonical = orjson.dumps(
        [call.tenant, call.model, call.endpoint, material], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).digest()


async def replay_as_stream(
    body: JSONObject, include_usage: bool
) -> AsyncGenerator[ChunkBatch, None]:
    """A cached answer as the chunks a live stream would have sent, in one batch."""
    chat = body.get("object") == "chat.completion"
    base = {
        "id": body.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
    }
    batch: list[JSONObject] = []
    for choice in body.get("choices", []):
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            batch.append({**base, "choices": [{"index": index, "delta": {
                "role": "assistant", "content": message.get("content") or ""},
                "finish_reason": None}]})
            batch.append({**base, "choices": [{"index": index, "delta": {},
                                               "finish_reason": choice.get("finish_reason")}]})
        else:
            batch.append({**base, "choices": [{"index": index, "text": choice.get("text", ""),
                                               "finish_reason": choice.get("finish_reason"),
                                               "logprobs": None}]})
    if include_usage and body.get("usage"):
        batch.append({**base, "choices": [], "usage": body["usage"]})
    if batch:
        yield batch
