"""Prometheus metrics, all named ``kvgate_*``, in a registry owned by one app instance.

Counters and histograms are :mod:`kvgate.observability.families`' (no lock per update).

Live per-deployment numbers (in flight, circuit state) are read from the deployments at scrape
time by a collector, so the hot path never touches a gauge for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvgate.core.deployment import Deployment
from kvgate.observability.families import CounterFamily, HistogramFamily
from kvgate.observability.gc_pauses import GCPauseCollector

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = CounterFamily(
            "kvgate_requests_total", "Client requests by final status",
            ["model", "endpoint", "status"], r,
        )
        self.request_seconds = HistogramFamily(
            "kvgate_request_duration_seconds", "Time from request receipt to the last byte",
            ["model"], r, buckets=_LATENCY_BUCKETS_S,
        )
        self.ttft_seconds = HistogramFamily(
            "kvgate_time_to_first_token_seconds", "Time from receipt to the first streamed chunk",
            ["model", "deployment"], r, buckets=_LATENCY_BUCKETS_S,
        )
        self.overhead_seconds = HistogramFamily(
            "kvgate_gateway_overhead_seconds",
            "Time spent in the gateway before the upstream call (parse, auth, cache, route)",
            [], r, buckets=_OVERHEAD_BUCKETS_S,
        )
        self.tokens = CounterFamily(
            "kvgate_tokens_total", "Tokens by kind (prompt, completion, cached)",
            ["model", "deployment", "kind"], r,
        )
        self.cost_usd = CounterFamily(
            "kvgate_cost_usd_total", "Spend computed from usage and deployment prices",
            ["model", "deployment"], r,
        )
        self.cache_lookups = CounterFamily(
            "kvgate_cache_lookups_total", "Response cache lookups by result",
            ["result"], r,
        )
        self.attempts = CounterFamily(
            "kvgate_upstream_attempts_total", "Upstream attempts by outcome",
            ["model", "deployment", "outcome"], r,
        )
        self.routing_decisions = CounterFamily(
            "kvgate_routing_decisions_total",
            "KV-aware routing decisions: hit (sent where the prefix was), spill (load guard "
            "sent it elsewhere), cold (no deployment had it)",
            ["model", "deployment", "outcome"], r,
        )
        self.stream_resumes = CounterFamily(
            "kvgate_stream_resumes_total",
            "Streams cut mid-answer and continued on another deployment",
            ["model", "outcome"], r,
        )
        self.limit_rejections = CounterFamily(
            "kvgate_limit_rejections_total",
            "Requests refused by a tenant's limits: requests or tokens per minute (429), "
            "budget (402)",
            ["tenant", "limit"], r,
        )
        self.tenant_spend_usd = CounterFamily(
            "kvgate_tenant_spend_usd_total", "Spend charged to each tenant's budget",
            ["tenant"], r,
        )

        # The collector's passes (process-wide; timed by a callback, read at scrape time).
        r.register(GCPauseCollector())

        # The series the request path touches, by label values (a dict lookup each).
        self.requests_for = self.requests.labels
        self.request_seconds_for = self.request_seconds.labels
        self.ttft_seconds_for = self.ttft_seconds.labels
        self.tokens_for = self.tokens.labels
        self.cost_usd_for = self.cost_usd.labels
        self.attempts_for = self.attempts.labels
        self.routing_decisions_for = self.routing_decisions.labels
        self.stream_resumes_for = self.stream_resumes.labels
        self.limit_rejections_for = self.limit_rejections.labels
        self.tenant_spend_for = self.tenant_spend_usd.labels

    def watch_deployments(
        self,
        deployments: Sequence[tuple[str, Deployment]],
        circuit_state: Callable[[Deployment], int],
    ) -> None:
        self.registry.register(_DeploymentCollector(deployments, circuit_state))

    def render(self) -> bytes:
        return generate_latest(self.registry)
