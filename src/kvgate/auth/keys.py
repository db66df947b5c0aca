"""Map API keys to tenants. Keys may be configured in plain text or as ``sha256:<hex>`` digests,
alone or as objects carrying a key name (for per-key limits).

Lookups hash the presented key once and compare digests in a dict, so the cost does not grow
with the number of keys and plain-text keys are never kept in memory after start-up.
"""

from __future__ import annotations

import hashlib
import hmac

from kvgate.config.schema import ApiKeySettings, TenantSettings
from kvgate.errors import GatewayError


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, tenants: list[TenantSettings]) -> None:
        #: digest -> (tenant, key name or None for an unnamed key)
        self._owner_by_digest: dict[str, tuple[str, str | None]] = {}
        for tenant in tenants:
            for entry in tenant.api_keys:
                key, name = ((entry.key, entry.name) if isinstance(entry, ApiKeySettings)
                             else (entry, None))
                digest = key[7:].lower() if key.startswith("sha256:") else _digest(key)
                self._owner_by_digest[digest] = (tenant.name, name)

    def owner_of(self, authorization: bytes | None) -> tuple[str, str | None]:
        """The tenant and key name owning the bearer key in an ``Authorization`` header, or
        401."""
        if not authorization:
            raise GatewayError(
                401, "missing API key: send 'Authorization: Bearer <key>'",
                error_type="authentication_error", code="missing_api_key",
            )
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise GatewayError(
                401, "malformed Authorization header: expected 'Bearer <key>'",
                error_type="authentication_error", code="invalid_api_key",
            )
        owner = self._owner_by_digest.get(_digest(key.strip()))
        if owner is None:
            raise GatewayError(
                401, "invalid API key", error_type="authentication_error", code="invalid_api_key"
            )
        return owner


def is_admin(authorization: bytes | None, admin_key: str | None) -> bool:
    if admin_key is None or not authorization:
        return False
    expected = f"Bearer {admin_key}".encode()
    return hmac.compare_digest(authorization, expected)
