"""The lock-free metric families render exactly what prometheus_client's own Counter and
Histogram render after the same updates (their ``_created`` timestamps aside)."""

from __future__ import annotations

import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from kvgate.observability.families import CounterFamily, HistogramFamily
from kvgate.observability.metrics import Metrics

BUCKETS = (0.0001, 0.00025, 0.001, 0.005, 0.1, 1.0, 2.5, 60.0)
_CREATED = re.compile(rb"^(\w+_created(?:\{[^}]*\})?) [0-9.e+]+$", re.MULTILINE)


def render(registry: CollectorRegistry) -> bytes:
    return _CREATED.sub(rb"\1 T", generate_latest(registry))


@pytest.mark.parametrize("seed", range(4))
def test_same_exposition_as_prometheus_client(seed: int) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = CounterFamily("t_requests_total", "Requests", ["model", "status"], ours)
    reference_counter = Counter("t_requests_total", "Requests", ["model", "status"],
                                registry=theirs)
    histogram = HistogramFamily("t_seconds", "Seconds", ["model"], ours, buckets=BUCKETS)
    reference_histogram = Histogram("t_seconds", "Seconds", ["model"], buckets=BUCKETS,
                                    registry=theirs)
    plain = HistogramFamily("t_overhead_seconds", "Overhead", [], ours, buckets=BUCKETS)
    reference_plain = Histogram("t_overhead_seconds", "Overhead", buckets=BUCKETS,
                                registry=theirs)
    assert render(ours) == render(theirs)  # before any update: the unlabelled one at zero
    rng = random.Random(seed)
    for _ in range(500):
        labels = (rng.choice("ab"), rng.choice(["200", "429", "500"]))
        amount = rng.choice([1.0, 0.0, rng.random() * 100, 3])
        counter.labels(*labels).inc(amount)
        reference_counter.labels(*labels).inc(amount)
        # Values on and around the bounds: a bound itself falls in its own bucket (le).
        value = rng.choice([*BUCKETS, rng.random() * 0.01, rng.random() * 100, 0.0])
        histogram.labels(labels[0]).observe(value)
        reference_histogram.labels(labels[0]).observe(value)
        plain.observe(value)
        reference_plain.observe(value)
    assert render(ours) == render(theirs)
    assert b't_seconds_bucket{le="+Inf",model="a"}' in render(ours)


def test_counters_refuse_negative_amounts_and_wrong_labels() -> None:
    counter = CounterFamily("t_total", "T", ["a"], CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("x", "y")
    assert counter.labels("x").value == 0.0


def test_a_second_metric_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry(auto_describe=True)
    CounterFamily("t_total", "T", [], registry)
    with pytest.raises(ValueError, match="Duplicated"):
        CounterFamily("t_total", "T", [], registry)


def test_the_gateway_metrics_render() -> None:
    metrics = Metrics()
    metrics.requests_for("m", "chat", "200").inc()
    metrics.request_seconds_for("m").observe(0.02)
    metrics.overhead_seconds.observe(0.0003)
    text = metrics.render().decode()
    assert 'kvgate_requests_total{endpoint="chat",model="m",status="200"} 1.0' in text
    assert 'kvgate_request_duration_seconds_bucket{le="0.025",model="m"} 1.0' in text
    assert 'kvgate_request_duration_seconds_bucket{le="0.01",model="m"} 0.0' in text
    assert 'kvgate_gateway_overhead_seconds_bucket{le="0.0005"} 1.0' in text
    assert "kvgate_gateway_overhead_seconds_count 1.0" in text


def test_an_infinite_bound_is_the_last_bucket_once() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 1.0, float("inf"))
    HistogramFamily("t_seconds", "S", [], ours, buckets=buckets).observe(5.0)
    Histogram("t_seconds", "S", buckets=buckets, registry=theirs).observe(5.0)
    assert render(ours) == render(theirs)
    assert render(ours).count(b'le="+Inf"') == 1
