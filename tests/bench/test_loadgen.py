"""The load generator against a server with known latencies: what it measures and how it
offers load (closed loop concurrency, open-loop arrivals, sessions, duration)."""

from __future__ import annotations

import itertools

import pytest

from kvgate.bench.loadgen import (
    LoadSpec,
    arrival_times_s,
    run_load,
    session_predecessors,
)
from kvgate.bench.request import BenchRequest
from kvgate.bench.stats import percentile, summarize
from tests.bench.fake_server import fake_server, instructed


async def test_percentiles_match_injected_latencies() -> None:
    ttft_ms = [10 + (i * 7) % 60 for i in range(120)]  # 10..69 ms, each value twice
    total_ms = [t + 30 for t in ttft_ms]
    requests = [instructed(ttft_ms=t, total_ms=total, tokens=6)
                for t, total in zip(ttft_ms, total_ms, strict=True)]
    async with fake_server() as (url, _):
        result = await run_load(url, requests, LoadSpec(mode="closed", concurrency=12))
    summary = summarize(result)
    assert summary["requests"]["ok"] == 120
    measured_by_key = {
        "ttft_ms": sorted(r.ttft_s * 1000 for r in result.records if r.ttft_s is not None),
        "latency_ms": sorted(r.latency_s * 1000 for r in result.records),
    }
    for key, injected in (("ttft_ms", ttft_ms), ("latency_ms", total_ms)):
        expected = sorted(float(v) for v in injected)
        measured_sorted = measured_by_key[key]
        for q in (50, 90, 95, 99):
            measured = summary[key][f"p{q}"]
            # The summary's percentiles are those of the records it was given.
            assert measured == pytest.approx(percentile(measured_sorted, q), abs=0.01)
            # Sleeping never ends early, so nothing is measured below what was injected.
            assert measured >= percentile(expected, q) - 1.0, (key, q, measured)
        # Loopback, parsing and a shared event loop add a little to every request; a busy
        # machine adds spikes to some. The median excess ignores the spikes.
        excess = sorted(m - e for m, e in zip(measured_sorted, expected, strict=True))
        assert excess[len(excess) // 2] < 20.0, (key, excess[len(excess) // 2])
    assert summary["tokens"]["output"] == 120 * 6
    # (total - ttft) / (tokens - 1) = 30 / 5 = 6 ms between tokens.
    assert summary["tpot_ms"]["p50"] == pytest.approx(6.0, abs=2.0)


async def test_closed_loop_holds_concurrency_and_per_deployment_share() -> None:
    requests = [instructed(ttft_ms=15, deployment=f"d{i % 4 // 3}") for i in range(40)]
    async with fake_server() as (url, log):
        result = await run_load(url, requests, LoadSpec(mode="closed", concurrency=5))
    assert log.max_in_flight == 5
    summary = summarize(result)
    assert summary["deployments"]["d0"]["requests"] == 30
    assert summary["deployments"]["d1"]["share"] == 0.25


async def test_non_streamed_reads_usage_route_and_cache() -> None:
    requests = [instructed(stream=False, total_ms=5, tokens=3, matched_blocks=i % 2,
                           cache="exact" if i < 2 else "miss") for i in range(8)]
    async with fake_server() as (url, _):
        summary = summarize(await run_load(url, requests, LoadSpec(concurrency=4)))
    assert summary["ttft_ms"] is None
    assert summary["tokens"] == {"prompt": 56, "output": 24}
    assert summary["routing_affinity"] == 0.5
    assert summary["cache_hit_ratio"] == 0.25
    assert summary["cache"] == {"exact": 2, "miss": 6}


async def test_route_outcomes_and_cache_answers_without_a_deployment() -> None:
    requests = [instructed(stream=False, matched_blocks=1, outcome="hit"),
                instructed(stream=False, matched_blocks=0, outcome="cold"),
                instructed(deployment="", cache="exact")]
    async with fake_server() as (url, _):
        # A base URL the way the OpenAI SDK takes it (with /v1) works too.
        summary = summarize(await run_load(url + "/v1", requests, LoadSpec(concurrency=3)))
    assert summary["route_outcomes"] == {"cold": 1, "hit": 1}
    assert summary["deployments"]["(cache)"]["requests"] == 1


async def test_affinity_from_header_and_null_without_route_info() -> None:
    with_header = [instructed(matched_header=512 if i < 3 else 0) for i in range(4)]
    async with fake_server() as (url, _):
        summary = summarize(await run_load(url, with_header, LoadSpec(concurrency=2)))
        assert summary["routing_affinity"] == 0.75
        plain = summarize(await run_load(url, [instructed()] * 3, LoadSpec(concurrency=2)))
    assert plain["routing_affinity"] is None
    assert plain["route_info_requests"] == 0


async def test_crlf_framed_streams_are_read_the_same() -> None:
    async with fake_server() as (url, _):
        result = await run_load(url, [instructed(crlf=True, ttft_ms=20, tokens=5)],
                                LoadSpec(concurrency=1))
    record = result.records[0]
    assert not record.error and not record.usage_missing
    assert record.output_tokens == 5
    assert record.ttft_s is not None and record.ttft_s >= 0.019


async def test_errors_are_counted_by_kind() -> None:
    requests = [instructed(status=503), instructed(cut_after=2, tokens=5),
                instructed(usage=False, tokens=4), instructed()]
    async with fake_server() as (url, _):
        result = await run_load(url, requests, LoadSpec(concurrency=4))
    summary = summarize(result)
    assert summary["requests"]["errors"] == 2
    assert summary["requests"]["error_kinds"] == {"http_503: injected_error": 1,
                                                  "stream_incomplete": 1}
    assert summary["requests"]["usage_missing"] == 1
    no_usage = result.records[2]
    assert no_usage.output_tokens == 4  # estimated from content events


async def test_unreachable_target_is_an_error_not_a_crash() -> None:
    from tests.support.processes import free_port

    result = await run_load(f"http://127.0.0.1:{free_port()}", [instructed()],
                            LoadSpec(concurrency=1))
    assert result.records[0].error.startswith("client_error")


async def test_fixed_rate_open_loop_keeps_its_schedule() -> None:
    requests = [instructed(ttft_ms=40) for _ in range(30)]
    spec = LoadSpec(mode="fixed", rate_per_s=100.0)
    # NOTE: a second try only when the first ran late: once (2026-12-07, CI on a 2-core VM)
    # the whole 0.3 s schedule met a stall and the median request left 47 ms late, which
    # says nothing about the generator. A generator that does not keep its schedule is late
    # in both tries and fails.
    for _ in range(2):
        async with fake_server() as (url, log):
            result = await run_load(url, requests, spec)
        summary = summarize(result)
        if summary["dispatch_lag_ms"]["p50"] < 10.0:
            break
    # Open loop: 30 arrivals 10 ms apart, each 40 ms long, so several overlap.
    assert log.max_in_flight >= 3
    # The median request leaves on schedule; a busy machine may delay a few (the tail).
    assert summary["dispatch_lag_ms"]["p50"] < 10.0
    gaps_s = sorted(b - a for a, b in zip(log.arrivals_s, log.arrivals_s[1:], strict=False))
    assert gaps_s[len(gaps_s) // 2] == pytest.approx(0.010, abs=0.004)


def test_poisson_arrivals_are_seeded() -> None:
    requests = [BenchRequest(body=b"{}", stream=False)] * 2000
    first = arrival_times_s(requests, LoadSpec(mode="poisson", rate_per_s=50.0, seed=3))
    assert first == arrival_times_s(requests, LoadSpec(mode="poisson", rate_per_s=50.0, seed=3))
    assert first != arrival_times_s(requests, LoadSpec(mode="poisson", rate_per_s=50.0, seed=4))
    assert first[-1] / len(first) == pytest.approx(1 / 50.0, rel=0.1)


def test_timestamp_arrivals_follow_the_trace_scaled() -> None:
    requests = [BenchRequest(body=b"{}", stream=False, at_s=t) for t in (5.0, 5.5, 7.0)]
    assert arrival_times_s(requests, LoadSpec(mode="timestamps", speedup=2.0)) == [0, 0.25, 1]
    with pytest.raises(ValueError, match="at_s"):
        arrival_times_s([BenchRequest(body=b"{}", stream=False)],
                        LoadSpec(mode="timestamps"))


@pytest.mark.parametrize("spec", [LoadSpec(mode="closed", concurrency=6),
                                  LoadSpec(mode="fixed", rate_per_s=400.0)])
async def test_turns_of_a_session_never_overlap(spec: LoadSpec) -> None:
    requests = [instructed(ttft_ms=20, session=i % 3) for i in range(12)]
    assert session_predecessors(requests)[:6] == [-1, -1, -1, 0, 1, 2]
    async with fake_server() as (url, log):
        result = await run_load(url, requests, spec)
    assert log.session_overlaps == 0
    by_session: dict[int, list[tuple[float, float]]] = {}
    for record in result.records:
        by_session.setdefault(record.session, []).append((record.start_s, record.end_s))
    for turns in by_session.values():
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(turns))


async def test_think_time_pauses_between_turns_of_a_conversation() -> None:
    # Two conversations of three turns each, one worker per conversation.
    requests = [instructed(ttft_ms=5, session=i % 2) for i in range(6)]
    async with fake_server() as (url, _):
        result = await run_load(url, requests, LoadSpec(concurrency=2, think_s=0.05))
    by_session: dict[int, list[tuple[float, float]]] = {}
    for record in result.records:
        by_session.setdefault(record.session, []).append((record.start_s, record.end_s))
    for turns in by_session.values():
        assert turns[0][0] < 0.04  # the first turn is not delayed
        for (_, end), (next_start, _) in itertools.pairwise(turns):
            assert next_start - end >= 0.05


async def test_duration_stops_new_requests() -> None:
    requests = [instructed(ttft_ms=30) for _ in range(200)]
    async with fake_server() as (url, _):
        closed = await run_load(url, requests, LoadSpec(concurrency=2, duration_s=0.2))
        opened = await run_load(url, requests, LoadSpec(mode="fixed", rate_per_s=50,
                                                        duration_s=0.2))
    assert 4 <= len(closed.records) <= 20
    assert len(opened.records) == 10  # arrivals at 0, 20, ..., 180 ms
    assert closed.requests_offered == 200


def test_load_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LoadSpec(mode="fixed")
    with pytest.raises(ValueError):
        LoadSpec(concurrency=0)
    with pytest.raises(ValueError):
        LoadSpec(mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoadSpec(think_s=-1.0)
