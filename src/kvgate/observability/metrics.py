"""Prometheus metrics, all named ``kvgate_*``, in a registry owned by one app instance.

Live per-deployment numbers (in flight, circuit state) are read from the deployments at scrape
time by a collector, so the hot path never touches a gauge for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvgate.core.deployment import Deployment

_LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)
_OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class _DeploymentCollector(Collector):
    def __init__(
        self,
        deployments: Sequence[tuple[str, Deployment]],
        circuit_state: Callable[[Deployment], int],
    ) -> None:
        self._deployments = deployments
        self._circuit_state = circuit_state

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "kvgate_deployment_in_flight", "Requests in flight per deployment",
            labels=["model", "deployment"],
        )
        circuit = GaugeMetricFamily(
            "kvgate_deployment_circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open",
            labels=["model", "deployment"],
        )
        for model, deployment in self._deployments:
            in_flight.add_metric([model, deployment.id], deployment.stats.in_flight)
            circuit.add_metric([model, deployment.id], self._circuit_state(deployment))
        yield in_flight
        yield circuit


class LabelCache:
    """Label children of one metric, memoised: ``labels()`` takes a lock and builds a key per
    call, about ten times the cost of this dict lookup on the hot path. Label values here come
    from config (model, deployment) and small fixed sets, so the dict stays small.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kvgate_requests_total", "Client requests by final status",
            ["model", "endpoint", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            "kvgate_request_duration_seconds", "Time from request receipt to the last byte",
            ["model"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.ttft_seconds = Histogram(
            "kvgate_time_to_first_token_seconds", "Time from receipt to the first streamed chunk",
            ["model", "deployment"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.overhead_seconds = Histogram(
            "kvgate_gateway_overhead_seconds",
            "Time spent in the gateway before the upstream call (parse, auth, cache, route)",
            buckets=_OVERHEAD_BUCKETS_S, registry=r,
        )
        self.tokens = Counter(
            "kvgate_tokens_total", "Tokens by kind (prompt, completion, cached)",
            ["model", "deployment", "kind"], registry=r,
        )
        self.cost_usd = Counter(
            "kvgate_cost_usd_total", "Spend computed from usage and deployment prices",
            ["model", "deployment"], registry=r,
        )
        self.cache_lookups = Counter(
            "kvgate_cache_lookups_total", "Response cache lookups by result",
            ["result"], registry=r,
        )
        self.attempts = Counter(
            "kvgate_upstream_attempts_total", "Upstream attempts by outcome",
            ["model", "deployment", "outcome"], registry=r,
        )
        self.routing_decisions = Counter(
            "kvgate_routing_decisions_total",
            "KV-aware routing decisions: hit (sent where the prefix was), spill (load guard "
            "sent it elsewhere), cold (no deployment had it)",
            ["model", "deployment", "outcome"], registry=r,
        )
        self.stream_resumes = Counter(
            "kvgate_stream_resumes_total",
            "Streams cut mid-answer and continued on another deployment",
            ["model", "outcome"], registry=r,
        )
        self.limit_rejections = Counter(
            "kvgate_limit_rejections_total",
            "Requests refused by a tenant's limits: requests or tokens per minute (429), "
            "budget (402)",
            ["tenant", "limit"], registry=r,
        )
        self.tenant_spend_usd = Counter(
            "kvgate_tenant_spend_usd_total", "Spend charged to each tenant's budget",
            ["tenant"], registry=r,
        )

        # Memoised label children for everything the request path touches.
        self.requests_for = LabelCache(self.requests)
        self.request_seconds_for = LabelCache(self.request_seconds)
        self.ttft_seconds_for = LabelCache(self.ttft_seconds)
        self.tokens_for = LabelCache(self.tokens)
        self.cost_usd_for = LabelCache(self.cost_usd)
        self.attempts_for = LabelCache(self.attempts)
        self.routing_decisions_for = LabelCache(self.routing_decisions)
        self.stream_resumes_for = LabelCache(self.stream_resumes)
        self.limit_rejections_for = LabelCache(self.limit_rejections)
        self.tenant_spend_for = LabelCache(self.tenant_spend_usd)

    def watch_deployments(
        self,
        deployments: Sequence[tuple[str, Deployment]],
        circuit_state: Callable[[Deployment], int],
    ) -> None:
        self.registry.register(_DeploymentCollector(deployments, circuit_state))

    def render(self) -> bytes:
        return generate_latest(self.registry)
