"""The auth stage, first in the journey: the bearer key names the call's tenant, or 401."""

from __future__ import annotations

from typing import Any

from kvgate.auth.keys import KeyRing
from kvgate.core.call import Call, Outcome, Stage


class AuthStage:
    """Implements :class:`~kvgate.core.call.Stage`; only built when tenants are configured
    (without tenants the gateway is open and calls carry no tenant)."""

    def __init__(self, next_stage: Stage, keys: KeyRing) -> None:
        self._next = next_stage
        self._keys = keys

    async def __call__(self, call: Call) -> Outcome:
        call.tenant, call.api_key_name = self._keys.owner_of(call.authorization)
        return await self._next(call)

    def describe(self) -> dict[str, Any]:
        return {}
