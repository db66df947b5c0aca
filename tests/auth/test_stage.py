"""The auth stage: the bearer key names the call's tenant before anything else runs, or 401."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.auth.keys import KeyRing
from kvgate.auth.stage import AuthStage
from kvgate.config.schema import TenantSettings
from kvgate.core.call import Call, Completion, Outcome
from kvgate.errors import GatewayError


class Terminal:
    """The rest of the pipeline: answers every call and remembers what it saw."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, call: Call) -> Outcome:
        self.calls.append(call)
        return Completion({"ok": True}, None, "miss", 0.0, "m")

    def describe(self) -> dict[str, Any]:
        return {}


def stage() -> tuple[AuthStage, Terminal]:
    terminal = Terminal()
    keys = KeyRing([TenantSettings(name="team-a", api_keys=["sk-a"]),
                    TenantSettings(name="team-b", api_keys=["sk-b"])])
    return AuthStage(terminal, keys), terminal


def call(authorization: bytes | None, raw_body: bytes = b"{not json") -> Call:
    return Call(request_id="r1", endpoint="chat", received_s=0.0, authorization=authorization,
                raw_body=raw_body)


async def test_a_known_key_sets_the_tenant_and_passes_the_call_on() -> None:
    auth, terminal = stage()
    incoming = call(b"Bearer sk-b")
    outcome = await auth(incoming)
    assert isinstance(outcome, Completion) and outcome.body == {"ok": True}
    assert terminal.calls == [incoming]
    assert incoming.tenant == "team-b"
    assert incoming.raw_body == b"{not json"  # auth reads the header only, never the body
    assert auth.describe() == {}


@pytest.mark.parametrize(("authorization", "code"), [
    (None, "missing_api_key"),
    (b"sk-a", "invalid_api_key"),
    (b"Bearer sk-nope", "invalid_api_key"),
])
async def test_a_refused_call_goes_no_further(authorization: bytes | None, code: str) -> None:
    auth, terminal = stage()
    refused = call(authorization)
    with pytest.raises(GatewayError) as info:
        await auth(refused)
    assert (info.value.status, info.value.code) == (401, code)
    assert info.value.error_type == "authentication_error"
    assert terminal.calls == [] and refused.tenant is None
