"""``kvgate_gc_pause_seconds{generation}``: every pass of the cyclic collector, by generation,
with how long it took; in-process against explicit passes, and from a running gateway whose
``server.gc_thresholds`` make young passes frequent."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kvgate.observability.gc_pauses import BUCKETS_S, _Pauses
from kvgate.observability.metrics import Metrics
from tests.support.processes import run_gateway


def pauses(exposition: str) -> dict[str, dict[str, float]]:
    """Per generation: count, sum and each bucket (by its ``le``)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "kvgate_gc_pause_seconds":
            continue
        for sample in family.samples:
            entry = out.setdefault(sample.labels["generation"], {})
            key = sample.name.removeprefix("kvgate_gc_pause_seconds_")
            entry[key if key != "bucket" else sample.labels["le"]] = sample.value
    return out


def buckets_are_cumulative(entry: dict[str, float]) -> bool:
    counts = [entry[le] for le in (*map(repr, BUCKETS_S), "+Inf")]
    return counts == sorted(counts) and counts[-1] == entry["count"]


def test_each_pass_is_counted_under_its_generation_with_its_time() -> None:
    metrics = Metrics()
    gc.disable()  # only the passes below: none triggered by allocations meanwhile
    try:
        before = pauses(metrics.render().decode())
        started_s = time.perf_counter()
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        elapsed_s = time.perf_counter() - started_s
        after = pauses(metrics.render().decode())
    finally:
        gc.enable()
    assert set(after) == {"0", "1", "2"}
    assert after["0"]["count"] - before["0"]["count"] == 1
    assert after["1"]["count"] == before["1"]["count"]
    assert after["2"]["count"] - before["2"]["count"] == 2
    spent_s = sum(after[g]["sum"] - before[g]["sum"] for g in after)
    assert 0 < spent_s <= elapsed_s
    assert all(buckets_are_cumulative(entry) for entry in after.values())


def test_the_callback_never_raises_on_odd_reports() -> None:
    pauses = _Pauses()
    pauses("stop", {"generation": 0})  # its start came before the callback was installed
    assert sum(map(sum, pauses.counts)) == 0
    for info in ({"generation": 7}, {"generation": -1}, {}):
        pauses("start", info)
        pauses("stop", info)
    # Beyond the oldest counts as the oldest, below the youngest or missing as the youngest.
    assert [sum(counts) for counts in pauses.counts] == [2, 0, 1]
    assert all(seconds >= 0 for seconds in pauses.seconds)


def test_many_registries_one_timing_callback() -> None:
    for _ in range(3):
        Metrics()
    timing = [c for c in gc.callbacks if type(c).__module__ == "kvgate.observability.gc_pauses"]
    assert len(timing) == 1


CONFIG = """
server: { gc_thresholds: [10, 10, 10] }
providers:
  mock: { type: mock }
models:
  - name: demo
    deployments: [ { provider: mock, model: m } ]
"""


def scrape(url: str) -> Iterator[tuple[str, dict[str, float]]]:
    yield from pauses(httpx.get(url + "/metrics", timeout=10).text).items()


def test_a_running_gateway_exposes_its_passes() -> None:
    with run_gateway(CONFIG) as running:
        before = dict(scrape(running.url))
        # Start-up's own full pass (before the heap is frozen) is already there.
        assert before["2"]["count"] >= 1
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=running.url, timeout=10) as client:
            for _ in range(60):
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        after = dict(scrape(running.url))
    # A young pass every 10 tracked allocations (net: a request frees most of what it made):
    # dozens over 60 requests.
    assert after["0"]["count"] - before["0"]["count"] >= 10
    assert after["0"]["sum"] > before["0"]["sum"]
    assert all(buckets_are_cumulative(entry) for entry in after.values())
