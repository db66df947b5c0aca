"""The parse stage: the raw body becomes the call's request fields, validated once.

It runs after auth, so a caller without a valid key learns nothing about the models served
(401 before any 400 or 404), and before every stage that reads the request.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kvgate.core.call import Call, Outcome, Stage
from kvgate.request.parse import parse_into


class ParseStage:
    """Implements :class:`~kvgate.core.call.Stage` over :func:`parse_into`."""

    def __init__(self, next_stage: Stage, *, models: Collection[str], max_image_bytes: int
                 ) -> None:
        self._next = next_stage
        self._models = frozenset(models)
        self._max_image_bytes = max_image_bytes

    async def __call__(self, call: Call) -> Outcome:
        raw, call.raw_body = call.raw_body, b""
        parse_into(call, raw, models=self._models, max_image_bytes=self._max_image_bytes)
        return await self._next(call)

    def describe(self) -> dict[str, Any]:
        return {}
