"""The Call: what a fresh one holds before any stage has touched it."""

from __future__ import annotations

import dataclasses

import pytest

from kvgate.core.call import Call


def fresh() -> Call:
    return Call(request_id="r1", endpoint="completions", received_s=12.5)


def test_a_fresh_call_holds_only_what_it_was_given() -> None:
    call = fresh()
    assert (call.request_id, call.endpoint, call.received_s) == ("r1", "completions", 12.5)
    assert call.authorization is None and call.raw_body == b""
    assert call.body == {} and call.model == ""
    assert call.stream is False and call.include_usage is False
    assert call.image_digests == [] and call.image_tokens == []
    assert call.tenant is None and call.route == {} and call.routing_state is None
    assert (call.billed_tokens, call.billed_usd, call.failed_attempts) == (0, 0.0, 0)
    assert call.response_headers == ()


def test_calls_share_no_mutable_state() -> None:
    """Each call gets its own containers: stages append to them while serving it."""
    one, other = fresh(), fresh()
    one.body["model"] = "x"
    one.image_digests.append(b"d")
    one.image_tokens.append(3)
    one.route["strategy"] = "round_robin"
    assert other.body == {} and other.image_digests == [] and other.image_tokens == []
    assert other.route == {}


def test_only_declared_fields_exist() -> None:
    """Slots: a misspelt field fails loudly instead of creating a new attribute."""
    call = fresh()
    with pytest.raises(AttributeError):
        call.tennant = "x"  # type: ignore[attr-defined]
    assert {f.name for f in dataclasses.fields(Call)} >= {"request_id", "tenant", "billed_usd"}


def test_the_three_identifying_fields_are_required() -> None:
    with pytest.raises(TypeError):
        Call(request_id="r1", endpoint="chat")  # type: ignore[call-arg]
