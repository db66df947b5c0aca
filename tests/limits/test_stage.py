"""The limits stage in-process: each admitted request is settled exactly once whatever its
ending, a key admitted and its tenant refused gives the key's reservation back, model access
is checked first; and the estimator's worst case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvgate.config.schema import DeploymentSettings
from kvgate.core.call import Call, Completion, Outcome, StreamingCompletion
from kvgate.core.provider import JSONObject
from kvgate.errors import GatewayError
from kvgate.limits.access import ModelAccess
from kvgate.limits.admission import Reservation
from kvgate.limits.estimate import CostEstimator, ModelPrice
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.stage import LimitsStage
from kvgate.limits.store import MemoryLimitStore
from kvgate.observability.metrics import Metrics

TENANT = TenantPolicy("t", rpm=None, tpm=1000, budget_usd=1.0, budget_window="daily")
KEY = TenantPolicy("t/k", rpm=None, tpm=None, budget_usd=0.5, budget_window="daily")
PRICES = {"m": ModelPrice.of([DeploymentSettings(
    provider="p", model="x", cost_per_1k_input=1.0, cost_per_1k_output=2.0,
    max_output_tokens=100)], 4096)}


class RecordingStore(MemoryLimitStore):
    def __init__(self) -> None:
        super().__init__()
        self.settled: list[tuple[str, Reservation, int, float]] = []

    def settle(self, policy: TenantPolicy, reservation: Reservation, tokens: int,
               usd: float) -> None:
        self.settled.append((policy.name, reservation, tokens, usd))
        super().settle(policy, reservation, tokens, usd)


class Upstream:
    """Bills 50 tokens and $0.01, then answers, fails, hangs or streams."""

    def __init__(self, ending: str) -> None:
        self.ending = ending

    async def __call__(self, call: Call) -> Outcome:
        call.billed_tokens, call.billed_usd = 50, 0.01
        if self.ending == "error":
            raise GatewayError(502, "upstream failed")
        if self.ending == "hang":
            await asyncio.Event().wait()
        if self.ending == "stream":
            return StreamingCompletion(_chunks(), None, "miss", "x")
        return Completion({}, None, "miss", 0.01, "x")

    def describe(self) -> dict[str, Any]:
        return {}


async def _chunks() -> AsyncIterator[list[JSONObject]]:
    for _ in range(3):
        yield [{"choices": []}]


def build(ending: str, **kwargs: Any) -> tuple[LimitsStage, RecordingStore]:
    store = RecordingStore()
    stage = LimitsStage(Upstream(ending), store, [TENANT], Metrics(),
                        estimator=CostEstimator(PRICES, prompt_chars_per_token=4), **kwargs)
    return stage, store


def call(key: str | None = None, **body: object) -> Call:
    c = Call("r", "chat", 0.0, tenant="t", api_key_name=key, model="m")
    c.body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], **body}
    return c


@pytest.mark.parametrize("ending", ["answer", "error", "hang", "stream"])
async def test_settled_exactly_once_on_every_ending(ending: str) -> None:
    stage, store = build(ending)
    task = asyncio.create_task(stage(call()))
    if ending == "hang":
        await asyncio.sleep(0.01)
        task.cancel()
    try:
        outcome = await task
    except (GatewayError, asyncio.CancelledError):
        outcome = None
    if isinstance(outcome, StreamingCompletion):
        assert store.settled == []  # held while the client reads
        async for _ in outcome.chunks:
            pass
        await outcome.chunks.aclose()
        await outcome.chunks.aclose()  # a second close settles nothing more
    assert [(name, tokens, usd) for name, _, tokens, usd in store.settled] == [("t", 50, 0.01)]
    usage = await store.usage(TENANT)
    assert usage.reserved_usd == 0 and usage.spent_usd == pytest.approx(0.01)
    assert usage.tokens_left == pytest.approx(950, abs=1)


async def test_a_key_admitted_and_its_tenant_refused_gives_the_key_back() -> None:
    store = RecordingStore()
    tenant = TenantPolicy("t", rpm=1, tpm=None, budget_usd=None, budget_window="daily")
    stage = LimitsStage(Upstream("answer"), store, [tenant], Metrics(),
                        estimator=CostEstimator(PRICES, prompt_chars_per_token=4),
                        key_policies={("t", "k"): KEY})
    await stage(call("k"))
    with pytest.raises(GatewayError) as caught:  # the key has budget left, the tenant no rpm
        await stage(call("k"))
    assert caught.value.status == 429 and "tenant 't'" in caught.value.message
    # Both answered-request settlements, then the key's reservation given back at no cost.
    assert [(name, tokens, usd) for name, _, tokens, usd in store.settled] == [
        ("t/k", 50, 0.01), ("t", 50, 0.01), ("t/k", 0, 0.0)]
    usage = await store.usage(KEY)
    assert usage.reserved_usd == 0 and usage.spent_usd == pytest.approx(0.01)


async def test_a_model_the_tenant_may_not_use_is_refused_before_any_limit() -> None:
    from kvgate.config.schema import TenantSettings

    access = ModelAccess([TenantSettings(name="t", api_keys=["k"], models=["other"])])
    stage, store = build("answer", access=access)
    with pytest.raises(GatewayError) as caught:
        await stage(call())
    assert caught.value.status == 403 and caught.value.code == "model_not_allowed"
    assert store.settled == [] and (await store.usage(TENANT)).requests_left is None


def test_the_estimate_is_prompt_plus_output_bound_at_the_dearest_prices() -> None:
    estimator = CostEstimator(PRICES, prompt_chars_per_token=4)
    c = call(max_tokens=10)  # 40 chars = 10 tokens + 4 (message) + 3 (reply)
    c.image_tokens = [100]
    estimate = estimator(c)
    assert estimate.tokens == 17 + 100 + 10
    assert estimate.nusd == (117 * 1 + 10 * 2) * 1_000_000  # $1 and $2 per 1k tokens
    assert estimator(call()).tokens == 17 + 100  # no max_tokens: the deployment's cap
    assert estimator(call(max_completion_tokens=5, max_tokens=50, n=3)).tokens == 17 + 15
