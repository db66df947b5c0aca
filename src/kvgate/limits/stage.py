"""The limits stage: a tenant's model access (403), then its API key's and its own rate limits
(429) and budgets (402), by reservation: the request's worst-case cost is reserved at
admission and settled from its real usage when it ends.

It sits right after parsing (the model and prompt are known), before the response cache: a
cached answer still counts as a request and settles at no cost. Settlement happens exactly
once per admitted request, whatever the ending: an answer, an upstream error, failover
exhausted, the deadline, a cancelled task, or a stream the client left (settled when the API
layer closes it, for what the attempts billed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from kvgate.core.call import Call, ChunkStream, Outcome, Stage, StreamingCompletion
from kvgate.core.provider import ChunkBatch
from kvgate.limits.access import ModelAccess
from kvgate.limits.admission import Admission, Estimate, Reservation
from kvgate.limits.estimate import CostEstimator
from kvgate.limits.policy import TenantPolicy
from kvgate.limits.responses import backend_unavailable, rate_limit_headers, refusal
from kvgate.limits.store import LimitBackendError, LimitStore
from kvgate.observability.metrics import Metrics

logger = logging.getLogger("kvgate.limits")


def backend_error_counter(metrics: Metrics, on_error: str) -> Callable[[str], None]:
    """``kvgate_limits_backend_errors_total{operation,on_error}``, registered on the app's
    registry; returns what counts one error of an operation (admit, settle, usage, reset)."""
    counter = Counter("kvgate_limits_backend_errors_total",
                      "Limit store operations that failed because its backend was unreachable",
                      ["operation", "on_error"], registry=metrics.registry)
    return lambda operation: counter.labels(operation, on_error).inc()


class LimitsStage:
    def __init__(self, next_stage: Stage, store: LimitStore, policies: list[TenantPolicy],
                 metrics: Metrics, *, estimator: CostEstimator,
                 key_policies: dict[tuple[str, str], TenantPolicy] | None = None,
                 access: ModelAccess | None = None, fail_closed: bool = False,
                 on_backend_error: Callable[[str], None] | None = None) -> None:
        self._next = next_stage
        self._store = store
        self._policies = {p.name: p for p in policies}
        self._key_policies = key_policies or {}
        self._access = access
        self._estimate = estimator
        self._metrics = metrics
        self._fail_closed = fail_closed
        self._on_backend_error = on_backend_error
        #: Whether the store was unreachable at the latest admission: logs the transitions,
        #: not every request of an outage.
        self._backend_down = False
        #: The latest admission per policy, for /admin/stats (bounded by the config).
        self._latest: dict[str, Admission] = {}

    @property
    def store(self) -> LimitStore:
        return self._store

    def policies_of(self, tenant: str) -> tuple[TenantPolicy | None, dict[str, TenantPolicy]]:
        """A tenant's own policy and its named keys' policies, for the admin API."""
        keys = {key: p for (t, key), p in self._key_policies.items() if t == tenant}
        return self._policies.get(tenant), keys

    def allowed_models(self, tenant: str) -> list[str] | None:
        return None if self._access is None else self._access.models_of(tenant)

    async def __call__(self, call: Call) -> Outcome:
        if self._access is not None:
            self._access.check(call)
        tenant = call.tenant
        if tenant is None:
            return await self._next(call)
        policy = self._policies.get(tenant)
        key_policy = (self._key_policies.get((tenant, call.api_key_name))
                      if call.api_key_name is not None else None)
        if policy is None and key_policy is None:
            return await self._next(call)
        settle = _Settlement(self._store, call, self._metrics)
        estimate = self._estimate(call)
        try:
            for each in (key_policy, policy):  # the key first: it is the narrower limit
                if each is not None:
                    admission = await self._admit(each, estimate)
                    if admission.refused is not None:
                        self._metrics.limit_rejections_for(each.name, admission.refused).inc()
                        raise refusal(each, admission)
                    settle.held.append((each, admission.reservation))
                    if (each.rpm or each.tpm) and not call.response_headers:
                        call.response_headers = rate_limit_headers(each, admission)
            outcome = await self._next(call)
        except BaseException:
            # Refused by the tenant after its key was admitted, or the request failed or was
            # cancelled: release what was reserved and charge what was billed.
            settle()
            raise
        if isinstance(outcome, StreamingCompletion):
            outcome.chunks = _SettledOnClose(outcome.chunks, settle)
        else:
            settle()
        return outcome

    async def _admit(self, policy: TenantPolicy, estimate: Estimate) -> Admission:
        try:
            admission = await self._store.admit(policy, estimate)
        except LimitBackendError as exc:
            if self._on_backend_error is not None:
                self._on_backend_error("admit")
            if not self._backend_down:
                self._backend_down = True
                logger.warning("limits store unreachable (%s): %s", exc, "refusing requests "
                               "(fail_closed)" if self._fail_closed else "admitting requests "
                               "without limits (fail_open)")
            if self._fail_closed:
                raise backend_unavailable() from exc
            return Admission(None, 0.0, None, None, 0.0)  # nothing held; settle still charges
        if self._backend_down:
            self._backend_down = False
            logger.warning("limits store reachable again: limits enforced")
        self._latest[policy.name] = admission
        return admission

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per policy (tenants, and keys as ``tenant/key``): its limits and, as of its latest
        request, what was left."""
        out: dict[str, dict[str, Any]] = {}
        for policy in (*self._policies.values(), *self._key_policies.values()):
            latest = self._latest.get(policy.name)
            out[policy.name] = {
                "rpm": policy.rpm, "tpm": policy.tpm, "budget_usd": policy.budget_usd,
                "budget_window": policy.budget_window,
                "requests_left": None if latest is None else _round(latest.requests_left),
                "tokens_left": None if latest is None else _round(latest.tokens_left),
                "spent_usd": None if latest is None else round(latest.spent_usd, 6),
                "reserved_usd": None if latest is None else round(latest.reserved_usd, 6),
            }
        return out


class _Settlement:
    """Settles what one request holds, once: a second call does nothing."""

    __slots__ = ("_call", "_metrics", "_store", "held")

    def __init__(self, store: LimitStore, call: Call, metrics: Metrics) -> None:
        self._store = store
        self._call = call
        self._metrics = metrics
        self.held: list[tuple[TenantPolicy, Reservation]] = []

    def __call__(self) -> None:
        held, self.held = self.held, []
        if not held:
            return
        call = self._call
        for policy, reservation in held:
            self._store.settle(policy, reservation, call.billed_tokens, call.billed_usd)
        if call.billed_usd and call.tenant is not None:
            self._metrics.tenant_spend_for(call.tenant).inc(call.billed_usd)


class _SettledOnClose:
    """A chunk stream that settles its call once, when it is closed (end, error or client
    gone); the API layer always closes the stream it relays."""

    __slots__ = ("_chunks", "_settle")

    def __init__(self, chunks: ChunkStream, settle: Callable[[], None]) -> None:
        self._chunks = chunks
        self._settle = settle

    def __aiter__(self) -> _SettledOnClose:
        return self

    def __anext__(self) -> Awaitable[ChunkBatch]:
        return self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            # First: closing bills an attempt the client left mid-answer.
            await self._chunks.aclose()
        finally:  # also when the close itself is cancelled
            self._settle()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

