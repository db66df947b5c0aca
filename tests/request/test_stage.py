"""The parse stage: the raw body becomes the call's request fields before later stages run."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kvgate.core.call import Call, Completion, Outcome
from kvgate.errors import GatewayError
from kvgate.request.stage import ParseStage


class Terminal:
    """The rest of the pipeline: answers every call and remembers what it saw."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, call: Call) -> Outcome:
        self.calls.append(call)
        return Completion({"ok": True}, None, "miss", 0.0, call.model)

    def describe(self) -> dict[str, Any]:
        return {}


def stage() -> tuple[ParseStage, Terminal]:
    terminal = Terminal()
    return ParseStage(terminal, models=["demo"], max_image_bytes=1024), terminal


def call(body: object) -> Call:
    return Call(request_id="r1", endpoint="chat", received_s=0.0, raw_body=orjson.dumps(body))


async def test_the_next_stage_sees_the_parsed_request_and_not_the_raw_body() -> None:
    parse, terminal = stage()
    incoming = call({"model": "demo", "messages": [{"role": "user", "content": "hi"}],
                     "stream": True})
    outcome = await parse(incoming)
    assert isinstance(outcome, Completion) and outcome.upstream_model == "demo"
    assert terminal.calls == [incoming]
    assert incoming.model == "demo" and incoming.stream
    assert incoming.body["messages"] == [{"role": "user", "content": "hi"}]
    assert incoming.raw_body == b""  # parsed once; the bytes are not kept around
    assert parse.describe() == {}


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "demo", "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, 400),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"model": "demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}}]}]},
     413),
])
async def test_a_refused_request_goes_no_further(body: object, status: int) -> None:
    parse, terminal = stage()
    with pytest.raises(GatewayError) as info:
        await parse(call(body))
    assert info.value.status == status
    assert terminal.calls == []


async def test_the_model_list_is_fixed_at_construction() -> None:
    models = ["demo"]
    terminal = Terminal()
    parse = ParseStage(terminal, models=models, max_image_bytes=1024)
    models.append("late")
    with pytest.raises(GatewayError) as info:
        await parse(call({"model": "late", "messages": [{"role": "user", "content": "x"}]}))
    assert info.value.status == 404
