"""KeyRing: plain and sha256 keys name a tenant; anything else is a 401 in OpenAI's shape."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from kvgate.auth.keys import KeyRing, is_admin
from kvgate.config.schema import TenantSettings
from kvgate.errors import GatewayError


def tenant(name: str, *keys: str) -> TenantSettings:
    return TenantSettings(name=name, api_keys=list(keys))


def sha256_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


RING = KeyRing([
    tenant("team-a", "sk-plain-a", sha256_key("sk-hashed-a")),
    # Digests may be written in capitals: they are compared lowercased.
    tenant("team-b", sha256_key("sk-hashed-b").upper().replace("SHA256:", "sha256:")),
])


def refusal(authorization: bytes | None) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        RING.owner_of(authorization)[0]
    error = info.value
    assert error.status == 401 and error.error_type == "authentication_error"
    body = orjson.loads(error.body())
    assert body == {"error": {"message": error.message, "type": "authentication_error",
                              "code": error.code, "param": None}}
    return error


def test_plain_and_sha256_keys_name_their_tenant() -> None:
    assert RING.owner_of(b"Bearer sk-plain-a")[0] == "team-a"
    assert RING.owner_of(b"Bearer sk-hashed-a")[0] == "team-a"
    assert RING.owner_of(b"Bearer sk-hashed-b")[0] == "team-b"
    # The scheme is case-insensitive, surrounding blanks around the key are not part of it.
    assert RING.owner_of(b"bearer  sk-plain-a ")[0] == "team-a"


def test_a_digest_is_not_a_key() -> None:
    """Knowing the configured digest must not let a caller in."""
    assert refusal(sha256_key("sk-hashed-a").encode()).code == "invalid_api_key"
    digest = sha256_key("sk-hashed-a").removeprefix("sha256:")
    assert refusal(b"Bearer " + digest.encode()).code == "invalid_api_key"


def test_missing_key_is_401() -> None:
    assert refusal(None).code == "missing_api_key"
    assert refusal(b"").code == "missing_api_key"


@pytest.mark.parametrize("header", [b"sk-plain-a", b"Basic sk-plain-a", b"Bearer", b"Bearer ",
                                    b"Bearer    ", b"Token sk-plain-a"])
def test_malformed_header_is_401(header: bytes) -> None:
    error = refusal(header)
    assert error.code == "invalid_api_key" and "malformed" in error.message


@pytest.mark.parametrize("header", [b"Bearer sk-unknown", b"Bearer SK-PLAIN-A",
                                    b"Bearer sk-plain-a-and-more"])
def test_unknown_key_is_401(header: bytes) -> None:
    error = refusal(header)
    assert error.code == "invalid_api_key" and error.message == "invalid API key"


def test_an_empty_configured_key_matches_no_request() -> None:
    """``api_keys: ["${UNSET}"]`` expands to "": that tenant is locked out, auth stays on."""
    ring = KeyRing([tenant("locked", "")])
    for header in (b"Bearer ", b"Bearer", b"", None):
        with pytest.raises(GatewayError) as info:
            ring.owner_of(header)[0]
        assert info.value.status == 401


def test_no_tenants_means_no_auth_stage() -> None:
    from kvgate.config.schema import Settings
    from kvgate.gateway.compose import build_gateway

    def stages(tenants: list[dict[str, object]]) -> list[str]:
        return list(build_gateway(Settings.model_validate({
            "providers": {"mock": {"type": "mock"}},
            "models": [{"name": "m", "deployments": [{"provider": "mock", "model": "x"}]}],
            "tenants": tenants,
        })).stages)

    assert stages([])[0] == "parse"  # open gateway: the journey starts at parsing
    assert stages([{"name": "t", "api_keys": ["k"]}])[0] == "auth"


def test_admin_key() -> None:
    assert is_admin(b"Bearer admin-1", "admin-1")
    assert not is_admin(b"Bearer admin-2", "admin-1")
    assert not is_admin(b"admin-1", "admin-1")
    assert not is_admin(None, "admin-1")
    assert not is_admin(b"Bearer admin-1", None)


def test_named_keys_give_their_tenant_and_name() -> None:
    from kvgate.config.schema import ApiKeySettings

    keys = KeyRing([TenantSettings(name="team-a", api_keys=[
        "plain", ApiKeySettings(key="sk-ci", name="ci", rate_limit={"rpm": 5}),
        {"key": "sha256:" + hashlib.sha256(b"sk-hashed").hexdigest(), "name": "hashed"},
    ])])
    assert keys.owner_of(b"Bearer plain") == ("team-a", None)
    assert keys.owner_of(b"Bearer sk-ci") == ("team-a", "ci")
    assert keys.owner_of(b"Bearer sk-hashed") == ("team-a", "hashed")
    assert keys.owner_of(b"Bearer sk-ci")[0] == "team-a"
