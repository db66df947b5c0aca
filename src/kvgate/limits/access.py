"""Which logical models a tenant may call: 403 ``model_not_allowed`` for the others.

Checked once the request is parsed (the model is known) and before its limits are taken, so
a refused model costs the tenant nothing.
"""

from __future__ import annotations

from kvgate.config.schema import TenantSettings
from kvgate.core.call import Call
from kvgate.errors import GatewayError


class ModelAccess:
    def __init__(self, tenants: list[TenantSettings]) -> None:
        #: Only tenants restricted to a subset; an unlisted tenant may call every model.
        self._allowed: dict[str, frozenset[str]] = {
            t.name: frozenset(t.models) for t in tenants if t.models is not None}

    @property
    def restricts(self) -> bool:
        return bool(self._allowed)

    def check(self, call: Call) -> None:
        """Raise 403 when ``call.tenant`` may not call ``call.model``."""
        if call.tenant is None:
            return
        allowed = self._allowed.get(call.tenant)
        if allowed is not None and call.model not in allowed:
            raise GatewayError(
                403, f"tenant '{call.tenant}' may not use the model '{call.model}'",
                error_type="permission_error", code="model_not_allowed", param="model",
            )

    def models_of(self, tenant: str) -> list[str] | None:
        allowed = self._allowed.get(tenant)
        return None if allowed is None else sorted(allowed)
